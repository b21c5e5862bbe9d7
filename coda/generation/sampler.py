"""Sampling with a key/value cache: one transformer call per scale over that scale's tokens only
(VAR's ``autoregressive_infer_cfg``, FoundationVision/VAR ``models/var.py``, commit 78b9539).

Guidance runs in a doubled batch [conditional; null class]. VAR's ramp: at scale si (0-based) of K,
t = cfg * si / (K - 1) and logits = (1 + t) * cond - t * uncond, so the first scale is unguided and
the last gets 1 + cfg. Then temperature, top-k and top-p filtering (the distribution of VAR's
``sample_with_top_k_top_p_``) and one ``torch.multinomial`` draw per scale from a seeded
generator: the same seed, labels and settings give the same tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .model import NextScaleGenerator


@dataclass(frozen=True)
class SamplingSettings:
    cfg: float = 1.5          # VAR's README FID setting (the paper's text says 2.0; VAR issue #86)
    top_k: int = 900          # VAR's README FID setting (for V = 4096); 0 = off
    top_p: float = 0.96       # 0 = off
    temperature: float = 1.0  # VAR samples at 1

    def record(self) -> dict:
        return {"cfg": self.cfg, "cfg_formula": "(1+t)*cond - t*uncond, t = cfg*si/(K-1) (VAR's linear ramp)",
                "top_k": self.top_k, "top_p": self.top_p, "temperature": self.temperature}


def guidance_weight(cfg: float, scale_index: int, num_scales: int) -> float:
    return cfg * scale_index / max(1, num_scales - 1)


def top_p_mask(ascending: Tensor, top_p: float) -> Tensor:
    """On logits sorted ascending: True where a code falls outside the smallest set holding top_p of
    the mass (VAR's rule: cumulative mass <= 1 - top_p; the most likely code is always kept)."""
    remove = ascending.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
    remove[..., -1:] = False
    return remove


def draw(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """One multinomial draw per token of B x l x n logits -> B x l (VAR: torch.multinomial, replacement)."""
    batch, length, n = logits.shape
    return torch.multinomial(logits.softmax(dim=-1).view(-1, n), 1, replacement=True,
                             generator=generator).view(batch, length)


def sample_tokens(logits: Tensor, top_k: int = 0, top_p: float = 0.0,
                  generator: torch.Generator | None = None) -> Tensor:
    """Draw from B x l x V logits restricted to the top k, then to the top_p mass: the distribution
    of VAR's sample_with_top_k_top_p_. With top_k the draw is over the k candidates (sorting k
    values instead of V; codes outside them have probability zero either way)."""
    if top_k <= 0:
        if top_p > 0:
            ordered, order = logits.sort(dim=-1)
            remove = top_p_mask(ordered, top_p)
            logits = logits.masked_fill(remove.scatter(-1, order, remove), -torch.inf)
        return draw(logits, generator)
    values, index = logits.topk(min(top_k, logits.shape[-1]), dim=-1)  # descending
    if top_p > 0:
        values = values.masked_fill(top_p_mask(values.flip(-1), top_p).flip(-1), -torch.inf)
    return index.gather(-1, draw(values, generator)[..., None])[..., 0]


@torch.no_grad()
def generate(model: NextScaleGenerator, labels: Tensor, settings: SamplingSettings = SamplingSettings(),
             generator: torch.Generator | None = None, *, cache: bool = True, inputs=None,
             forced: list[Tensor] | None = None, on_scale=None) -> list[Tensor]:
    """Token maps (one B x s x s LongTensor per scale) for class ``labels`` (B).

    ``cache``: one call per scale over its own tokens, keys and values of the coarser scales kept
    (VAR's way); off, every scale reruns the whole prefix under the block-causal mask (the same
    numbers up to float rounding: the reference the benchmark and the tests compare against).
    ``inputs``: the input path (default the model's value table). ``forced``: take these tokens
    (per scale, B x s^2 or B x s x s) instead of drawing (a test replays recorded tokens).
    ``on_scale(si, raw_logits, guided_logits)``: called per scale with the head's output for the
    doubled batch [labels; null class] and the guided logits drawn from.
    """
    inputs = model.inputs if inputs is None else inputs
    batch, scales = labels.shape[0], model.scales
    cond = model.class_emb(torch.cat((labels, torch.full_like(labels, model.num_classes))))
    x = model.start_tokens(cond)
    f_hat, begin, tokens, prefix = inputs.start(batch), 0, [], []
    model.kv_caching(cache)
    try:
        for si, side in enumerate(scales):
            end = begin + side * side
            if cache:
                raw = model.transformer(x, cond, None)
            else:
                prefix.append(x)
                raw = model.transformer(torch.cat(prefix, dim=1), cond, model.mask[..., :end, :end])[:, begin:]
            t = guidance_weight(settings.cfg, si, len(scales))
            guided = (1 + t) * raw[:batch] - t * raw[batch:]
            if forced is not None:
                idx = forced[si].reshape(batch, side * side).to(raw.device)
            else:
                scaled = guided / settings.temperature if settings.temperature != 1.0 else guided
                idx = sample_tokens(scaled, settings.top_k, settings.top_p, generator)
            if on_scale is not None:
                on_scale(si, raw, guided)
            tokens.append(idx.view(batch, side, side))
            f_hat, nxt = inputs.advance(f_hat, si, idx)
            if nxt is not None:
                x = model.embed(nxt, end).repeat(2, 1, 1)
            begin = end
    finally:
        model.kv_caching(False)
    return tokens

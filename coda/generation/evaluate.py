"""What a generator's held-out likelihood means at any scale: bits per token on token files against
the two baselines a generator must beat, the per-scale unigram of the training tokens and the
uniform code (log2 V). No decoding, so it is exact and cheap at demo scale.

Items labelled -1 (a class the generator never saw, the demo's val photographs) are scored with the
null class: the unconditional likelihood.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset

from .model import NextScaleGenerator
from .train import FlatTokens, split_flat, unflatten


def _levels(scales) -> torch.Tensor:
    return torch.cat([torch.full((s * s,), i) for i, s in enumerate(scales)])


@torch.no_grad()
def generator_bits(model: NextScaleGenerator, dataset: Dataset, batch_size: int = 64,
                   device: str | torch.device = "cpu") -> list[float]:
    """Mean negative log2-likelihood of the tokens per scale (teacher forced)."""
    model = model.to(device).eval()
    levels = _levels(model.scales).to(device)
    total = torch.zeros(len(model.scales), dtype=torch.float64, device=device)
    count = 0
    for batch in DataLoader(FlatTokens(dataset), batch_size=batch_size):
        tokens, labels = split_flat(batch.to(device))
        labels = torch.where(labels < 0, model.num_classes, labels)
        logits = model.logits_for(labels, unflatten(tokens, model.scales))
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens, reduction="none")  # B x L
        total.index_add_(0, levels, nll.double().sum(0))
        count += len(tokens)
    sizes = torch.tensor([s * s for s in model.scales], dtype=torch.float64, device=device)
    return (total / (count * sizes) / math.log(2)).tolist()


def unigram_counts(dataset: Dataset, scales, codebook_size: int) -> torch.Tensor:
    """How often each code occurs at each scale of the items: float64 num_scales x V."""
    out = torch.zeros(len(scales), codebook_size, dtype=torch.float64)
    levels = _levels(scales)
    for batch in DataLoader(FlatTokens(dataset), batch_size=256):
        tokens, _ = split_flat(batch)
        out.index_put_((levels.expand_as(tokens).reshape(-1), tokens.reshape(-1)),
                       torch.ones(tokens.numel(), dtype=torch.float64), accumulate=True)
    return out


def unigram_bits(train: Dataset, held_out: Dataset, scales, codebook_size: int) -> list[float]:
    """Cross-entropy (bits per token) of the held-out tokens under each scale's code frequencies in
    the training tokens, add-one smoothed (a code unseen in training is not infinitely surprising)."""
    fitted = unigram_counts(train, scales, codebook_size) + 1
    seen = unigram_counts(held_out, scales, codebook_size)
    log_p = (fitted / fitted.sum(1, keepdim=True)).log2()
    return (-(seen * log_p).sum(1) / seen.sum(1)).tolist()


def bits_table(model: NextScaleGenerator, train: Dataset, held_out: Dataset, batch_size: int = 64,
               device: str = "cpu") -> dict:
    """Per scale and over all tokens: the generator's bits per token, the unigram's, and log2 V."""
    sizes = [s * s for s in model.scales]
    gen = generator_bits(model, held_out, batch_size, device)
    uni = unigram_bits(train, held_out, model.scales, model.codebook_size)
    mean = lambda values: sum(v * n for v, n in zip(values, sizes)) / sum(sizes)
    return {"scales": list(model.scales), "generator": gen, "unigram": uni,
            "uniform": math.log2(model.codebook_size), "generator_mean": mean(gen), "unigram_mean": mean(uni),
            "items": len(held_out)}


def duplicate_share(samples: list[torch.Tensor], train: Dataset, num_scales: int | None = None) -> float:
    """Memorisation, exactly: the share of sampled token maps (one B x s x s tensor per scale) whose
    first ``num_scales`` scales (all: None) equal those of some training item."""
    k = len(samples) if num_scales is None else num_scales
    length = sum(level[0].numel() for level in samples[:k])
    seen = set()
    for batch in DataLoader(FlatTokens(train), batch_size=256):
        tokens, _ = split_flat(batch)
        seen.update(row.numpy().tobytes() for row in tokens[:, :length])
    flat = torch.cat([level.reshape(level.shape[0], -1) for level in samples[:k]], dim=1).long().cpu()
    return sum(row.numpy().tobytes() in seen for row in flat) / len(flat)

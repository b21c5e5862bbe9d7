"""The generator's transformer reproduces VAR's own outputs (tests/data/var/README.md): teacher-forced
logits for class and null-class inputs, and the KV-cached sampler's per-scale logits and final latent
when it replays VAR's recorded tokens, all within 1e-5."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from coda.compat.var import generator_state_from_var
from coda.generation.model import NextScaleGenerator, rows
from coda.generation.sampler import SamplingSettings, generate

DATA = Path(__file__).resolve().parent / "data" / "var"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def golden():
    tensors = load_file(str(DATA / "golden_var_tiny.safetensors"))
    return tensors, json.loads((DATA / "golden_var_tiny.json").read_text())


@pytest.fixture(scope="module")
def model(golden):
    tensors, info = golden
    kw = info["var_kwargs"]
    model = NextScaleGenerator(num_classes=kw["num_classes"], codebook_size=info["V"], code_dim=info["Cvae"],
                               scales=kw["patch_nums"], depth=kw["depth"], width=kw["embed_dim"],
                               heads=kw["num_heads"], mlp_ratio=kw["mlp_ratio"], norm_eps=kw["norm_eps"])
    state = generator_state_from_var({k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")})
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["inputs.code_values"] and unexpected == []  # VAR has no value table: its inputs differ
    # the buffers VAR saved equal the ones the generator builds
    assert torch.equal(tensors["state.attn_bias_for_masking"], model.mask)
    assert torch.equal(tensors["state.lvl_1L"][0], model.levels)
    return model.eval()


class VarQuantizerInputs:
    """VAR's inference input path (models/quant.py get_next_autoregressive_input) with its golden
    codebook and Phi convolutions: f_hat += Phi_si(bicubic_up(emb[idx])), then area down."""

    def __init__(self, tensors, scales, dim):
        self.q = {k[len("vae.quantize."):]: v for k, v in tensors.items() if k.startswith("vae.quantize.")}
        self.scales, self.dim = scales, dim

    def phi(self, k, h):
        w, b = self.q[f"quant_resi.qresi_ls.{k}.weight"], self.q[f"quant_resi.qresi_ls.{k}.bias"]
        return 0.5 * h + 0.5 * F.conv2d(h, w, b, padding=1)

    def start(self, batch):
        side = self.scales[-1]
        return torch.zeros(batch, self.dim, side, side)

    def advance(self, f_hat, k, idx):
        side, full = self.scales[k], self.scales[-1]
        h = self.q["embedding.weight"][idx.reshape(idx.shape[0], -1)].transpose(1, 2).reshape(-1, self.dim, side, side)
        if k == len(self.scales) - 1:
            return f_hat + self.phi(k, h), None
        f_hat = f_hat + self.phi(k, F.interpolate(h, size=(full, full), mode="bicubic"))
        return f_hat, rows(F.interpolate(f_hat, size=(self.scales[k + 1],) * 2, mode="area"))


@pytest.mark.parametrize("case", ["", "null."])
def test_teacher_forced_logits_equal_vars(golden, model, case):
    tensors, _ = golden
    with torch.no_grad():
        logits = model(tensors[f"input.{case}label_B"], tensors[f"input.{case}x_BLCv_wo_first_l"])
    expected = tensors[f"output.{case}logits"]
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max().item() <= TOLERANCE


def test_cached_sampler_replays_vars_per_scale_logits(golden, model):
    tensors, info = golden
    scales = info["patch_nums"]
    recorded = [tensors[f"output.infer.idx_Bl.{si}"] for si in range(len(scales))]
    inputs = VarQuantizerInputs(tensors, scales, info["Cvae"])
    seen, states = {}, []
    original = inputs.advance

    def advance(f_hat, k, idx):
        f_hat, nxt = original(f_hat, k, idx)
        states.append(f_hat)
        return f_hat, nxt

    inputs.advance = advance
    settings = SamplingSettings(cfg=1.5, top_k=0, top_p=0.0)
    tokens = generate(model, tensors["input.infer.label_B"], settings, inputs=inputs, forced=recorded,
                      on_scale=lambda si, raw, guided: seen.update({si: (raw, guided)}))
    for si in range(len(scales)):
        raw, guided = seen[si]
        assert (raw - tensors[f"output.infer.logits_raw.{si}"]).abs().max().item() <= TOLERANCE, si
        assert (guided - tensors[f"output.infer.logits_cfg.{si}"]).abs().max().item() <= TOLERANCE, si
        assert torch.equal(tokens[si].flatten(1), recorded[si])
    assert (states[-1] - tensors["output.infer.f_hat"]).abs().max().item() <= TOLERANCE


def test_seeded_draws_reproduce_vars_tokens(golden, model):
    """VAR draws once per scale with torch.multinomial from a CPU generator seeded 0 (g_seed=0)."""
    tensors, info = golden
    scales = info["patch_nums"]
    inputs = VarQuantizerInputs(tensors, scales, info["Cvae"])
    tokens = generate(model, tensors["input.infer.label_B"], SamplingSettings(cfg=1.5, top_k=0, top_p=0.0),
                      torch.Generator().manual_seed(0), inputs=inputs)
    for si in range(len(scales)):
        assert torch.equal(tokens[si].flatten(1), tensors[f"output.infer.idx_Bl.{si}"]), si

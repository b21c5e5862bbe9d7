"""VAE checkpoints in other layouts <-> ContinuousVAE: the released CODA VAEs (``vae_ema.pth``, with
peft LoRA) and MAR's ``kl16.safetensors`` (the same LDM layout without LoRA).

Official names (see tests/data/compat/coda_*_vae_ema_keys.tsv) keep the base conv in place and
add a branch beside it; peft moves the base conv down one level:

    <conv>.weight / .bias            <->  <conv>.base_layer.weight / .bias
    <conv>.lora_layer.down.weight    <->  <conv>.lora_A.default.weight
    <conv>.lora_layer.up.weight      <->  <conv>.lora_B.default.weight

``<conv>`` is an LDM name for the f16 MAR layout (mapped with coda.compat.ldm) and a plain diffusers
name for the f8 FLUX layout.

Settings: ``architecture`` is ``ldm.LDM_ARCHITECTURE`` (then the LDM keys of ldm.MAR_KL16) or
``DIFFUSERS_ARCHITECTURE`` (then ``diffusers_config``), plus ``lora_rank`` (None/0: no LoRA),
``lora_targets``, optional ``lora_where`` ("both", the release's behaviour) and ``lora_scale`` (1.0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch

from coda.lora import ADAPTER_NAME, LORA_TARGETS, add_lora, lora_target_names
from coda.vae import ContinuousVAE

from . import ldm
from .io import read_state_dict

DIFFUSERS_ARCHITECTURE = "diffusers AutoencoderKL"

# FLUX.1 VAE (tests/data/compat/flux_vae_keys.tsv); diffusers names.
FLUX_VAE: dict = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
    "act_fn": "silu", "latent_channels": 16, "norm_num_groups": 32, "sample_size": 1024, "scaling_factor": 0.3611,
    "shift_factor": 0.1159, "use_quant_conv": False, "use_post_quant_conv": False, "mid_block_add_attention": True,
}

# CODA f16: MAR KL-16 with rank-32 LoRA on conv1/conv2/upsample/downsample, encoder and decoder.
CODA_MAR16_SETTINGS: dict = {**ldm.MAR_KL16, "lora_rank": 32, "lora_targets": list(LORA_TARGETS["f16"]),
                             "lora_where": "both", "lora_scale": 1.0}

# CODA f8: FLUX.1 VAE with rank-32 LoRA on conv1/conv2, encoder and decoder.
CODA_FLUX8_SETTINGS: dict = {"architecture": DIFFUSERS_ARCHITECTURE, "diffusers_config": FLUX_VAE, "lora_rank": 32,
                             "lora_targets": list(LORA_TARGETS["f8"]), "lora_where": "both", "lora_scale": 1.0}


class Row(NamedTuple):
    """One parameter: official key, key in the (peft-wrapped) AutoencoderKL, kind, param, model shape."""

    official: str
    model: str
    kind: str
    param: str
    shape: tuple[int, ...]

    @property
    def official_shape(self) -> tuple[int, ...]:
        return ldm.official_shape(self.kind, self.param, self.shape)


def _diffusers_config(settings: Mapping) -> dict:
    architecture = settings.get("architecture")
    if architecture == ldm.LDM_ARCHITECTURE:
        return ldm.diffusers_config(settings)
    if architecture == DIFFUSERS_ARCHITECTURE:
        return dict(settings["diffusers_config"])
    raise ValueError(f"unknown VAE architecture {architecture!r}; expected "
                     f"{ldm.LDM_ARCHITECTURE!r} or {DIFFUSERS_ARCHITECTURE!r}")


def _plain_model(settings: Mapping) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    with torch.device("meta"):  # names and shapes only
        return AutoencoderKL(**_diffusers_config(settings))


def _module_pairs(settings: Mapping, model: torch.nn.Module) -> list[ldm.ModulePair]:
    if settings["architecture"] == ldm.LDM_ARCHITECTURE:
        return ldm.module_table(settings)
    return [ldm.ModulePair(name, name, type(module).__name__) for name, module in model.named_modules()
            if any(True for _ in module.parameters(recurse=False))]


def _lora_settings(settings: Mapping) -> dict | None:
    """The add_lora arguments of these settings; None without LoRA."""
    if not settings.get("lora_rank"):
        return None
    return {"rank": settings["lora_rank"], "targets": tuple(settings["lora_targets"]),
            "where": settings.get("lora_where", "both"), "scale": float(settings.get("lora_scale", 1.0))}


def official_layout(settings: Mapping) -> list[Row]:
    """Every parameter of the official checkpoint with its model key, derived from the settings only."""
    model = _plain_model(settings)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    lora = _lora_settings(settings)
    adapted = set(lora_target_names(model, lora["targets"], lora["where"])) if lora else set()
    rows = []
    for pair in _module_pairs(settings, model):
        wrapped = pair.diffusers in adapted
        for param in ("weight", "bias"):
            key = f"{pair.diffusers}.{param}"
            if key in shapes:
                model_key = f"{pair.diffusers}.base_layer.{param}" if wrapped else key
                rows.append(Row(f"{pair.official}.{param}", model_key, pair.kind, param, shapes[key]))
        if wrapped:
            out_ch, in_ch, kh, kw = shapes[f"{pair.diffusers}.weight"]
            rank = lora["rank"]
            rows.append(Row(f"{pair.official}.lora_layer.down.weight",
                            f"{pair.diffusers}.lora_A.{ADAPTER_NAME}.weight", "conv", "weight", (rank, in_ch, kh, kw)))
            rows.append(Row(f"{pair.official}.lora_layer.up.weight",
                            f"{pair.diffusers}.lora_B.{ADAPTER_NAME}.weight", "conv", "weight", (out_ch, rank, 1, 1)))
    return rows


def _layout_name(settings: Mapping) -> str:
    return f"official CODA VAE ({settings['architecture']}, LoRA rank {settings.get('lora_rank')})"


def build_vae(settings: Mapping) -> ContinuousVAE:
    """Random-init ContinuousVAE of these settings, LoRA attached (only LoRA trainable)."""
    vae = ContinuousVAE.from_config(_diffusers_config(settings))
    lora = _lora_settings(settings)
    if lora:
        add_lora(vae, **lora)
    return vae


def load_official_vae(state_dict: Mapping[str, torch.Tensor], settings: Mapping = CODA_MAR16_SETTINGS
                      ) -> ContinuousVAE:
    """A released CODA VAE state dict -> ContinuousVAE with LoRA. Strict: every missing key,
    unexpected key and wrong shape is reported at once, in official names."""
    rows = official_layout(settings)
    ldm.check_layout(state_dict, {r.official: r.official_shape for r in rows}, _layout_name(settings))
    vae = build_vae(settings)
    converted = {r.model: ldm.to_diffusers_tensor(r.kind, r.param, state_dict[r.official]) for r in rows}
    vae.autoencoder.load_state_dict(converted, strict=True)
    return vae


def load_mar_vae(path, settings: Mapping = ldm.MAR_KL16) -> ContinuousVAE:
    """MAR's kl16.safetensors (LDM layout, strict key and shape check); LoRA settings are ignored."""
    return load_official_vae(read_state_dict(path), {**settings, "lora_rank": None})


def export_official_vae_state_dict(vae: ContinuousVAE, settings: Mapping = CODA_MAR16_SETTINGS
                                   ) -> dict[str, torch.Tensor]:
    """Inverse of load_official_vae: the VAE's weights in the released layout (detached copies)."""
    rows = official_layout(settings)
    own = vae.autoencoder.state_dict()
    ldm.check_layout(own, {r.model: r.shape for r in rows}, f"ContinuousVAE built from {_layout_name(settings)}")
    return {r.official: ldm.to_official_tensor(r.kind, r.param, own[r.model]).detach().clone() for r in rows}

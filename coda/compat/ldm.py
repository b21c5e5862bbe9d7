"""LDM / MAR KL-autoencoder state-dict layout <-> diffusers ``AutoencoderKL`` layout.

MAR's ``kl16`` is the LDM (taming/CompVis) KL autoencoder. diffusers' ``AutoencoderKL`` computes the
same function with other module names, so we load MAR weights into diffusers through an explicit
module table generated from the architecture settings (the keys of
``tests/data/compat/golden_mar_vae_lora_tiny.json``).

Differences the table absorbs:
- names: ``down.{i}.block.{b}`` -> ``down_blocks.{i}.resnets.{b}``, ``nin_shortcut`` ->
  ``conv_shortcut``, ``mid.block_1/attn_1/block_2`` -> ``mid_block.resnets.0/attentions.0/resnets.1``,
  ``norm_out`` -> ``conv_norm_out``;
- decoder order: LDM ``up.{i}`` is diffusers ``up_blocks.{n-1-i}`` (LDM indexes by resolution level);
- attention projections: LDM 1x1 convs ``(C, C, 1, 1)``, diffusers ``Linear`` ``(C, C)``.

diffusers cannot express ``embed_dim != z_channels`` (it ties quant/post-quant conv widths to
``latent_channels``), ``double_z=False``, a GroupNorm eps other than 1e-6, or an LDM model without
mid-block attention; those settings raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import UserError

LDM_ARCHITECTURE = "LDM/MAR KL autoencoder"

# MAR's kl16.safetensors (docs/method.md section 1). scaling_factor is not part of the LDM architecture;
# it is the latent normalisation the CODA release uses for this VAE.
MAR_KL16: dict = {
    "architecture": LDM_ARCHITECTURE, "ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2,
    "attn_resolutions_encoder": [16], "attn_resolutions_decoder": [], "resolution_param": 256, "z_channels": 16,
    "embed_dim": 16, "double_z": True, "groupnorm_groups": 32, "groupnorm_eps": 1e-6, "scaling_factor": 0.2325,
}

# diffusers' encoder/decoder hard-code this GroupNorm eps.
_DIFFUSERS_GROUPNORM_EPS = 1e-6

# Sub-module renames inside one block, in the order LDM lists them.
_RESNET_PARTS = (("norm1", "norm1", "norm"), ("conv1", "conv1", "conv"),
                 ("norm2", "norm2", "norm"), ("conv2", "conv2", "conv"))
_ATTENTION_PARTS = (("norm", "group_norm", "norm"), ("q", "to_q", "attn_proj"),
                    ("k", "to_k", "attn_proj"), ("v", "to_v", "attn_proj"),
                    ("proj_out", "to_out.0", "attn_proj"))


@dataclass(frozen=True)
class ModulePair:
    """One module in both layouts. kind: "conv", "norm", "linear" or "attn_proj" (LDM 1x1 conv ==
    diffusers Linear: the only kind whose weight changes shape)."""

    official: str
    diffusers: str
    kind: str


def validate_settings(settings: Mapping) -> None:
    """Raise ValueError for LDM settings that diffusers' AutoencoderKL cannot reproduce exactly."""
    missing = [k for k in ("ch", "ch_mult", "num_res_blocks", "z_channels") if k not in settings]
    if missing:
        raise ValueError(f"LDM settings lack {missing}; see coda.compat.ldm.MAR_KL16 for the keys")
    problems = []
    if settings.get("embed_dim", settings["z_channels"]) != settings["z_channels"]:
        problems.append("embed_dim != z_channels (diffusers ties quant_conv/post_quant_conv to latent_channels)")
    if not settings.get("double_z", True):
        problems.append("double_z=False (diffusers' AutoencoderKL always predicts mean and logvar)")
    eps = settings.get("groupnorm_eps", _DIFFUSERS_GROUPNORM_EPS)
    if abs(eps - _DIFFUSERS_GROUPNORM_EPS) > 1e-12:
        problems.append(f"groupnorm_eps={eps} (diffusers hard-codes 1e-6)")
    if problems:
        raise ValueError("diffusers AutoencoderKL cannot express these LDM settings: " + "; ".join(problems))


def attention_levels(settings: Mapping, part: str) -> list[bool]:
    """Per LDM level i, whether its blocks have self-attention. LDM decides by the feature resolution
    the level would have for a ``resolution_param`` input (not the actual input size)."""
    key = {"encoder": "attn_resolutions_encoder", "decoder": "attn_resolutions_decoder"}[part]
    wanted = set(settings.get(key, ()))
    resolution = settings.get("resolution_param", 256)
    return [resolution // 2**i in wanted for i in range(len(settings["ch_mult"]))]


def diffusers_config(settings: Mapping) -> dict:
    """The AutoencoderKL config that computes the same function as the LDM model."""
    validate_settings(settings)
    n = len(settings["ch_mult"])
    encoder_attn = attention_levels(settings, "encoder")
    decoder_attn = attention_levels(settings, "decoder")
    return {
        "in_channels": settings.get("in_channels", 3),
        "out_channels": settings.get("out_ch", 3),
        "down_block_types": ["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in encoder_attn],
        # diffusers up_blocks[j] is LDM up[n-1-j]
        "up_block_types": ["AttnUpDecoderBlock2D" if decoder_attn[n - 1 - j] else "UpDecoderBlock2D"
                           for j in range(n)],
        "block_out_channels": [settings["ch"] * m for m in settings["ch_mult"]],
        "layers_per_block": settings["num_res_blocks"],
        "act_fn": "silu",
        "latent_channels": settings["z_channels"],
        "norm_num_groups": settings.get("groupnorm_groups", 32),
        "sample_size": settings.get("resolution_param", 256),
        "scaling_factor": settings.get("scaling_factor", 1.0),
        "shift_factor": settings.get("shift_factor"),
        "use_quant_conv": True,
        "use_post_quant_conv": True,
        "mid_block_add_attention": True,
    }


def _resnet(official: str, diffusers: str, in_ch: int, out_ch: int) -> list[ModulePair]:
    pairs = [ModulePair(f"{official}.{o}", f"{diffusers}.{d}", k) for o, d, k in _RESNET_PARTS]
    if in_ch != out_ch:
        pairs.append(ModulePair(f"{official}.nin_shortcut", f"{diffusers}.conv_shortcut", "conv"))
    return pairs


def _attention(official: str, diffusers: str) -> list[ModulePair]:
    return [ModulePair(f"{official}.{o}", f"{diffusers}.{d}", k) for o, d, k in _ATTENTION_PARTS]


def _mid(part: str, channels: int) -> list[ModulePair]:
    return (_resnet(f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", channels, channels)
            + _attention(f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0")
            + _resnet(f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", channels, channels))


def module_table(settings: Mapping) -> list[ModulePair]:
    """Every parameterised module of the LDM KL autoencoder, in LDM order, with its diffusers name."""
    validate_settings(settings)
    widths = [settings["ch"] * m for m in settings["ch_mult"]]
    n, blocks = len(widths), settings["num_res_blocks"]
    encoder_attn, decoder_attn = attention_levels(settings, "encoder"), attention_levels(settings, "decoder")

    table = [ModulePair("encoder.conv_in", "encoder.conv_in", "conv")]
    in_ch = settings["ch"]
    for i in range(n):
        for b in range(blocks):  # LDM keeps all blocks of a level before all its attentions
            table += _resnet(f"encoder.down.{i}.block.{b}", f"encoder.down_blocks.{i}.resnets.{b}",
                             in_ch, widths[i])
            in_ch = widths[i]
        for b in range(blocks if encoder_attn[i] else 0):
            table += _attention(f"encoder.down.{i}.attn.{b}", f"encoder.down_blocks.{i}.attentions.{b}")
        if i != n - 1:
            table.append(ModulePair(f"encoder.down.{i}.downsample.conv",
                                    f"encoder.down_blocks.{i}.downsamplers.0.conv", "conv"))
    table += _mid("encoder", widths[-1])
    table += [ModulePair("encoder.norm_out", "encoder.conv_norm_out", "norm"),
              ModulePair("encoder.conv_out", "encoder.conv_out", "conv"),
              ModulePair("decoder.conv_in", "decoder.conv_in", "conv")]
    table += _mid("decoder", widths[-1])

    # LDM lists decoder levels by index (0 = full resolution) although it runs them from n-1 down.
    for i in range(n):
        j = n - 1 - i
        in_ch = widths[i + 1] if i < n - 1 else widths[-1]
        for b in range(blocks + 1):
            table += _resnet(f"decoder.up.{i}.block.{b}", f"decoder.up_blocks.{j}.resnets.{b}",
                             in_ch, widths[i])
            in_ch = widths[i]
        for b in range(blocks + 1 if decoder_attn[i] else 0):
            table += _attention(f"decoder.up.{i}.attn.{b}", f"decoder.up_blocks.{j}.attentions.{b}")
        if i != 0:
            table.append(ModulePair(f"decoder.up.{i}.upsample.conv",
                                    f"decoder.up_blocks.{j}.upsamplers.0.conv", "conv"))
    table += [ModulePair("decoder.norm_out", "decoder.conv_norm_out", "norm"),
              ModulePair("decoder.conv_out", "decoder.conv_out", "conv"),
              ModulePair("quant_conv", "quant_conv", "conv"),
              ModulePair("post_quant_conv", "post_quant_conv", "conv")]
    return table


# ---- tensors and strict layout checks, shared with coda.compat.vae and coda.compat.quantizer ----

def to_diffusers_tensor(kind: str, param: str, tensor: torch.Tensor) -> torch.Tensor:
    if kind == "attn_proj" and param == "weight":
        return tensor.reshape(tensor.shape[0], tensor.shape[1])
    return tensor


def to_official_tensor(kind: str, param: str, tensor: torch.Tensor) -> torch.Tensor:
    if kind == "attn_proj" and param == "weight":
        return tensor.reshape(*tensor.shape, 1, 1)
    return tensor


def official_shape(kind: str, param: str, diffusers_shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(diffusers_shape) + ((1, 1) if kind == "attn_proj" and param == "weight" else ())


class LayoutError(UserError, ValueError):
    """A state dict does not match the expected layout; lists every problem, in that layout's names."""


def _fmt(shape) -> str:
    return "x".join(str(s) for s in shape) or "scalar"


def check_layout(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]],
                 layout: str) -> None:
    """Raise LayoutError naming every missing key, unexpected key and wrong shape at once."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = sorted(k for k in state_dict if k not in expected)
    wrong = [f"{k}: expected {_fmt(expected[k])}, got {_fmt(state_dict[k].shape)}"
             for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])]
    if not (missing or unexpected or wrong):
        return
    lines = [f"state dict does not match the {layout} layout "
             f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} wrong shape):"]
    lines += [f"  missing key: {k}" for k in missing]
    lines += [f"  unexpected key: {k}" for k in unexpected]
    lines += [f"  wrong shape: {w}" for w in wrong]
    raise LayoutError("\n".join(lines))

"""LoRA on the VAE convolutions through peft (docs/method.md section 2).

Each adapted ``nn.Conv2d`` computes ``conv(x) + up(down(x))``: ``down`` has the base conv's kernel,
stride and padding (in -> r, N(0, 1/r) init: peft's ``init_lora_weights="gaussian"``), ``up`` is a
1x1 conv (r -> out, zero init), scale ``lora_alpha / r = 1``. peft names them
``<conv>.lora_A.<adapter>`` / ``<conv>.lora_B.<adapter>`` and moves the base conv to
``<conv>.base_layer``.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

ADAPTER_NAME = "default"
LORA_TARGETS = {
    "f16": ("conv1", "conv2", "upsample", "downsample"),  # MAR KL-16
    "f8": ("conv1", "conv2"),  # FLUX VAE
}
WHERE = {"both": ("encoder.", "decoder."), "decoder": ("decoder.",)}


def _inner(vae_or_module: nn.Module) -> nn.Module:
    """The AutoencoderKL inside a ContinuousVAE, so names are diffusers names."""
    return getattr(vae_or_module, "autoencoder", vae_or_module)


def _is_lora_name(name: str) -> bool:
    return ".lora_" in name or ".base_layer" in name


def _is_lora_param(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def lora_target_names(vae_or_module: nn.Module, targets: Iterable[str] = LORA_TARGETS["f16"],
                      where: str = "both") -> list[str]:
    """Every nn.Conv2d whose dotted path contains a target substring, under the parts `where` names."""
    if where not in WHERE:
        raise ValueError(f"where must be one of {tuple(WHERE)}, got {where!r}")
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"targets must be non-empty substrings of module names, got {targets!r}")
    return [name for name, module in _inner(vae_or_module).named_modules()
            if isinstance(module, nn.Conv2d) and name.startswith(WHERE[where])
            and not _is_lora_name(name) and any(t in name for t in targets)]


def add_lora(vae_or_module: nn.Module, rank: int = 32, targets: Iterable[str] = LORA_TARGETS["f16"],
             where: str = "both", scale: float = 1.0) -> list[str]:
    """Attach LoRA in place; afterwards only LoRA parameters require grad. Returns the adapted
    module names (relative to the AutoencoderKL when given a ContinuousVAE)."""
    from peft import LoraConfig, inject_adapter_in_model

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    model = _inner(vae_or_module)
    if lora_module_names(model):
        raise ValueError("this module already has LoRA adapters; add_lora attaches them once")
    names = lora_target_names(model, targets, where)
    if not names:
        raise ValueError(f"no nn.Conv2d under {WHERE[where]} matches targets {tuple(targets)!r}")
    config = LoraConfig(r=rank, lora_alpha=scale * rank, lora_dropout=0.0, bias="none",
                        init_lora_weights="gaussian", target_modules=names)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name, param in vae_or_module.named_parameters():
        param.requires_grad_(_is_lora_param(name))
    return names


def lora_module_names(vae_or_module: nn.Module) -> list[str]:
    """Names of the peft-wrapped convs (relative to the AutoencoderKL for a ContinuousVAE)."""
    return [name for name, module in _inner(vae_or_module).named_modules()
            if hasattr(module, "lora_A") and hasattr(module, "base_layer")]

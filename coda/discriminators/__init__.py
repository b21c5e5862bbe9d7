"""Discriminators, chosen by name: ``patchgan`` (no pretrained weights) or ``dino`` (needs DINO ViT-S/16)."""
from __future__ import annotations

import torch

from .dino import HEADS, VIEWS, DinoDiscriminator, find_dino_weights, load_dino_backbone, missing_weights_message
from .patchgan import PatchGAN

KINDS = ("patchgan", "dino")


def check_discriminator(kind: str, dino_weights=None, dino_view: str = "crop_or_area",
                        dino_heads: str = "release") -> None:
    """Fail fast (before any data or model is loaded) when the discriminator cannot be built."""
    if kind not in KINDS:
        raise ValueError(f"unknown discriminator {kind!r}; choose one of {KINDS}")
    for key, value, allowed in (("dino_view", dino_view, VIEWS), ("dino_heads", dino_heads, HEADS)):
        if kind == "dino" and value not in allowed:
            raise ValueError(f"invalid train.{key}: {value!r} (choose from {allowed})")
    if kind == "dino" and find_dino_weights(dino_weights) is None:
        raise FileNotFoundError(missing_weights_message(dino_weights))


def build_discriminator(kind: str = "patchgan", *, dino_weights=None, channels: int = 64, n_layers: int = 3,
                        dino_view: str = "crop_or_area", dino_heads: str = "release"):
    """The module has a JSON-able ``config`` recording which discriminator ran."""
    check_discriminator(kind, dino_weights)
    if kind == "dino":
        return DinoDiscriminator(load_dino_backbone(dino_weights), weights=str(dino_weights), view=dino_view,
                                 heads=dino_heads)
    return PatchGAN(channels=channels, n_layers=n_layers)


def synchronise_batchnorm(discriminator, world_size: int, device):
    """The release's DINO heads synchronise BatchNorm over ranks (SyncBatchNorm, which needs CUDA).

    Elsewhere each rank normalises its own micro-batches and rank 0's running statistics are
    broadcast after each step (``coda.train.distributed.broadcast_state``).
    """
    config = discriminator.config
    if config["kind"] == "dino" and config["heads"] == "release" and world_size > 1 and device.type == "cuda":
        discriminator = torch.nn.SyncBatchNorm.convert_sync_batchnorm(discriminator)
        config["batchnorm"] = "synchronised"
    return discriminator

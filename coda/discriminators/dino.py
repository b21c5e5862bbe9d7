"""DINO discriminator (docs/method.md section 4): a frozen DINO ViT-S/16 and five small trainable heads.

Tokens after the patch embedding and after blocks 2, 5, 8, 11 each go to a head of spectral-norm
Conv1d layers over the token sequence (kernel 9, circular padding, BatchNorm, LeakyReLU 0.2).
The weights are the Hugging Face ``facebook/dino-vits16`` files, read from a local path only.
``view`` and ``heads`` choose between the release's behaviour (the default) and plain PyTorch's.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..files import reading

# facebook/dino-vits16's config.json (used when only the weights file is given).
VIT_S16_CONFIG = {"model_type": "vit", "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
                  "intermediate_size": 1536, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
                  "attention_probs_dropout_prob": 0.0, "layer_norm_eps": 1e-12, "image_size": 224,
                  "patch_size": 16, "num_channels": 3, "qkv_bias": True}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
BLOCKS = (2, 5, 8, 11)
VIEWS = ("crop_or_area", "bilinear")   # how the image is brought to the ViT's 224 px
HEADS = ("release", "torch")           # head init and BatchNorm: the release's or PyTorch's defaults
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def missing_weights_message(path: str | Path | None) -> str:
    where = f"'{path}' does not exist or holds no {' / '.join(WEIGHT_FILES)}" if path else "no train.dino_weights given"
    return (f"discriminator 'dino' needs the DINO ViT-S/16 weights, and {where}. Put the Hugging Face "
            f"facebook/dino-vits16 files (config.json + model.safetensors) in a local directory, or its "
            f"model.safetensors alone anywhere, and set train.dino_weights to that path; or set "
            f"train.discriminator: patchgan, which needs no pretrained weights.")


def find_dino_weights(path: str | Path | None) -> Path | None:
    """The weights file that ``path`` (a directory or a file) points to, or None."""
    if not path:
        return None
    path = Path(path)
    return next((p for p in (path, *(path / name for name in WEIGHT_FILES)) if p.is_file()), None)


def load_dino_backbone(path: str | Path):
    """A frozen transformers ``ViTModel`` from a local dino-vits16 directory or weights file.

    Loading goes through ``from_pretrained`` so the Hub's older key layout is converted by
    transformers itself; any missing weight is an error, not a random init.
    """
    from transformers import ViTConfig, ViTModel

    weights = find_dino_weights(path)
    if weights is None:
        raise FileNotFoundError(missing_weights_message(path))
    config_file = weights.parent / "config.json"
    with reading(weights, "DINO ViT-S/16 checkpoint (facebook/dino-vits16)", "download it again"):
        config = json.loads(config_file.read_text()) if config_file.is_file() else dict(VIT_S16_CONFIG)
        with tempfile.TemporaryDirectory() as tmp:  # from_pretrained wants a directory in HF layout
            (Path(tmp) / "config.json").write_text(json.dumps(config))
            standard_name = WEIGHT_FILES[0] if weights.suffix == ".safetensors" else WEIGHT_FILES[1]
            (Path(tmp) / standard_name).symlink_to(weights.resolve())
            model, info = ViTModel.from_pretrained(tmp, config=ViTConfig(**config), add_pooling_layer=False,
                                                   output_loading_info=True, local_files_only=True)
    if info["missing_keys"]:
        raise ValueError(f"{weights} is not a ViT checkpoint in the dino-vits16 layout: missing "
                         f"{sorted(info['missing_keys'])[:5]}...")
    return model.float().eval().requires_grad_(False)


def discriminator_view(x: torch.Tensor, size: int, view: str = "crop_or_area",
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` brought to ``size`` x ``size`` for the ViT.

    crop_or_area (the release): an input larger than ``size`` is, with probability 0.5, cropped at
    a random position at native resolution, otherwise ``area``-resized; one draw per call, from
    ``generator`` (CPU). bilinear: always a bilinear resize.
    """
    height, width = x.shape[-2:]
    if view == "bilinear":
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if (height, width) == (size, size):
        return x
    if height > size and width > size and float(torch.rand((), generator=generator)) < 0.5:
        top = int(torch.randint(height - size + 1, (), generator=generator))
        left = int(torch.randint(width - size + 1, (), generator=generator))
        return x[..., top:top + size, left:left + size]
    return F.interpolate(x, size=(size, size), mode="area")


def _conv(channels_in: int, channels_out: int, kernel: int, heads: str, **kwargs) -> nn.Conv1d:
    conv = nn.Conv1d(channels_in, channels_out, kernel, padding=kernel // 2, **kwargs)
    if heads == "release":
        nn.init.trunc_normal_(conv.weight, std=0.02)
        nn.init.zeros_(conv.bias)
    return spectral_norm(conv)


def _conv_block(channels: int, kernel: int, heads: str) -> nn.Sequential:
    norm = nn.BatchNorm1d(channels, eps=1e-6 if heads == "release" else 1e-5)
    return nn.Sequential(_conv(channels, channels, kernel, heads, padding_mode="circular"), norm,
                         nn.LeakyReLU(0.2, True))


class TokenHead(nn.Module):
    """B x C x N tokens -> B x 1 x N logits: a 1x1 block, a residual kernel-9 block, a 1x1 classifier."""

    def __init__(self, channels: int, kernel: int = 9, heads: str = "release"):
        super().__init__()
        self.inp = _conv_block(channels, 1, heads)
        self.res = _conv_block(channels, kernel, heads)
        self.cls = _conv(channels, 1, 1, heads)

    def forward(self, tokens):
        h = self.inp(tokens)
        h = (h + self.res(h)) / math.sqrt(2)  # keep the variance of the residual sum
        return self.cls(h)


class DinoDiscriminator(nn.Module):
    def __init__(self, backbone, blocks: tuple[int, ...] = BLOCKS, kernel: int = 9, weights: str | None = None,
                 view: str = "crop_or_area", heads: str = "release"):
        super().__init__()
        if max(blocks) >= backbone.config.num_hidden_layers:
            raise ValueError(f"blocks {blocks} exceed the backbone's {backbone.config.num_hidden_layers} layers")
        if view not in VIEWS or heads not in HEADS:
            raise ValueError(f"DINO view {view!r} / heads {heads!r}: choose a view from {VIEWS}, heads from {HEADS}")
        self.backbone = backbone.eval().requires_grad_(False)
        self.blocks, self.view = tuple(blocks), view
        self.heads = nn.ModuleList(TokenHead(backbone.config.hidden_size, kernel, heads)
                                   for _ in range(len(blocks) + 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.config = {"kind": "dino", "weights": str(weights) if weights else None, "blocks": list(blocks),
                       "kernel": kernel, "view": view, "heads": heads}

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen feature network: always inference behaviour
        return self

    def forward(self, x, generator: torch.Generator | None = None):
        """``generator`` draws the random view (``discriminator_view``)."""
        x = discriminator_view(x, self.backbone.config.image_size, self.view, generator)
        x = ((x + 1) / 2 - self.mean) / self.std
        hidden = self.backbone(pixel_values=x, output_hidden_states=True).hidden_states
        features = [hidden[0]] + [hidden[b + 1] for b in self.blocks]  # hidden[i + 1]: after block i
        logits = []
        for head, tokens in zip(self.heads, features):
            # The class token is added to every patch token rather than kept as its own position.
            tokens = tokens[:, 1:] + tokens[:, :1]
            logits.append(head(tokens.transpose(1, 2)).flatten(1))
        return torch.cat(logits, dim=1)

"""The continuous VAE behind the tokenizer's interface: the ceiling row of the tables.

``evaluate_tokenizer`` reads a model through what ``coda.tokenizer.Tokenizer`` offers (a forward
pass with a posterior mode, ``decode``, ``vae``, ``quantizer``, ``posterior``, ``lora``); the ceiling
reconstructs by decoding the VAE's own latent, and its "quantizer" has no codes (no scales, no
codebook), so every code statistic of its record is empty.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn


class NoCodes:
    """The quantizer of a model that has none: no scales, no codebook."""

    scales: tuple = ()
    codebook_size = None
    config = {"kind": None}


class ContinuousCeiling(nn.Module):
    """``vae`` as a tokenizer without quantization: reconstruction = decode(latent)."""

    kind = "continuous_vae"
    lora = None

    def __init__(self, vae: nn.Module, posterior: str = "sample"):
        super().__init__()
        self.vae, self.posterior, self.quantizer = vae, posterior, NoCodes()

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None, posterior: str | None = None):
        """(reconstruction, an output with no indices), as ``Tokenizer.forward`` gives (reconstruction, codes)."""
        latent = self.vae.latent(images, mode=posterior or self.posterior, generator=generator)
        return self.vae.decode(latent), SimpleNamespace(indices=[])

"""The CODA tokenizer: a frozen continuous VAE, optional LoRA adapters and a discrete quantizer.

Images in [-1, 1] go to per-scale index maps (``encode``) and back (``decode``). A directory
written by ``save_pretrained`` (config.json + model.safetensors) is all ``from_pretrained`` needs.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .files import atomic_path, reading, write_json
from .lora import add_lora
from .quantizers import QuantizerOutput, build_quantizer
from .vae import LATENT_MODES, ContinuousVAE

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class Tokenizer(nn.Module):
    """VAE (+ LoRA) + quantizer. ``lora`` is the ``add_lora`` settings the VAE was adapted with."""

    def __init__(self, vae: ContinuousVAE, quantizer: nn.Module, lora: dict | None = None,
                 posterior: str = "sample"):
        super().__init__()
        if posterior not in LATENT_MODES:
            raise ValueError(f"posterior must be one of {LATENT_MODES}, got {posterior!r}")
        if quantizer.dim != vae.latent_channels:
            raise ValueError(f"quantizer dim {quantizer.dim} != VAE latent channels {vae.latent_channels}")
        self.vae, self.quantizer, self.lora, self.posterior = vae, quantizer, lora, posterior

    @property
    def resolution(self) -> int:
        """Image side length whose latent matches the quantizer's last scale."""
        return self.quantizer.latent_size * self.vae.downsample_factor

    @property
    def indices_per_image(self) -> int:
        return sum(s * s for s in self.quantizer.scales)

    def latent(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised VAE latent of ``images``: a posterior sample or its mean, as configured."""
        if images.ndim != 4 or images.shape[-2:] != (self.resolution, self.resolution):
            raise ValueError(
                f"expected images of shape B x 3 x {self.resolution} x {self.resolution} in [-1, 1] "
                f"(the quantizer's last scale {self.quantizer.latent_size} times the VAE's "
                f"downsampling {self.vae.downsample_factor}), got {tuple(images.shape)}")
        return self.vae.latent(images, mode=self.posterior, generator=generator)

    def quantize(self, images: torch.Tensor, generator: torch.Generator | None = None) -> QuantizerOutput:
        return self.quantizer(self.latent(images, generator))

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """Training pass: (reconstruction, quantizer output)."""
        out = self.quantize(images, generator)
        return self.vae.decode(out.f_hat), out

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Images -> one LongTensor of code indices (B x s x s) per scale."""
        return self.quantize(images, generator).indices

    @torch.no_grad()
    def decode(self, indices: list[torch.Tensor], scales: int | None = None) -> torch.Tensor:
        """Per-scale index maps -> images in (about) [-1, 1]. ``scales`` k decodes from the first k
        scales only: the multi-scale residual code is progressive (coarser image, fewer bits)."""
        return self.vae.decode(self.quantizer.indices_to_latent(indices, scales))

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self(images, generator)[0]

    # -- persistence ---------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        return {"vae": self.vae.config, "lora": self.lora, "quantizer": self.quantizer.config,
                "posterior": self.posterior, "coda_version": __version__}

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(state, tmp)
        write_json(directory / CONFIG_NAME, self.config)
        return directory

    @classmethod
    def from_config(cls, config: dict) -> "Tokenizer":
        vae = ContinuousVAE.from_config(config["vae"])
        if config.get("lora"):
            add_lora(vae, **config["lora"])
        return cls(vae, build_quantizer(**config["quantizer"]), config.get("lora"),
                   config.get("posterior", "sample"))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "Tokenizer":
        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"{directory / name} not found: a tokenizer directory holds {CONFIG_NAME} and "
                    f"{WEIGHTS_NAME}, as written by Tokenizer.save_pretrained")
        remedy = "rerun the train stage that wrote it, or point to another tokenizer directory"
        with reading(directory, "tokenizer directory (config.json + model.safetensors)", remedy):
            tokenizer = cls.from_config(json.loads((directory / CONFIG_NAME).read_text()))
            tokenizer.load_state_dict(load_file(directory / WEIGHTS_NAME), strict=True)
        return tokenizer.eval()

    @classmethod
    def from_official(cls, vae_file: str | Path, quantizer_file: str | Path, variant: str = "f16",
                      posterior: str = "sample") -> "Tokenizer":
        """The authors' released ``vae_ema.pth`` + ``quantizer_ema.pth`` (read safely)."""
        from .compat import OFFICIAL_SETTINGS, load_official_quantizer, load_official_vae, read_state_dict

        if variant not in OFFICIAL_SETTINGS:
            raise ValueError(f"variant must be one of {sorted(OFFICIAL_SETTINGS)}, got {variant!r}")
        settings = OFFICIAL_SETTINGS[variant]
        vae = load_official_vae(read_state_dict(vae_file), settings["vae"])
        quantizer = load_official_quantizer(read_state_dict(quantizer_file), settings["quantizer"])
        lora = {"rank": settings["vae"]["lora_rank"], "targets": tuple(settings["vae"]["lora_targets"]),
                "where": "both"}
        return cls(vae, quantizer, lora, posterior).eval()

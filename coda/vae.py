"""ContinuousVAE: one interface over any diffusers ``AutoencoderKL`` (docs/method.md section 1); other
checkpoint layouts (MAR's kl16, the released CODA VAEs) are mapped onto it in ``coda.compat``.

Latents come in two spaces: *raw* (what the encoder + quant_conv produce, what post_quant_conv +
decoder consume) and *normalised* (what the quantizer sees). ``normalize``/``denormalize`` are the
only place the conversion happens: ``z = (raw - shift_factor) * scaling_factor``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# Random-init KL-VAE for CPU demos at 64x64: f8, 16 latent channels, about 3.9 M parameters.
SMALL_VAE: dict = {
    "in_channels": 3, "out_channels": 3, "block_out_channels": [32, 64, 128, 128], "layers_per_block": 1,
    "act_fn": "silu", "latent_channels": 16, "norm_num_groups": 32, "sample_size": 64,
    "scaling_factor": 1.0, "shift_factor": None,
}

LOGVAR_RANGE = (-30.0, 20.0)
LATENT_MODES = ("sample", "mean")


@dataclass
class Posterior:
    """Diagonal Gaussian over the raw latent; logvar is clamped to [-30, 20] as in LDM/diffusers."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def __post_init__(self):
        self.logvar = self.logvar.clamp(*LOGVAR_RANGE)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise


def _check_batch(x: torch.Tensor, channels: int, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{what} must have shape (B, {channels}, H, W), got {tuple(x.shape)}")


class ContinuousVAE(nn.Module):
    """A diffusers AutoencoderKL plus its latent normalisation (read from the diffusers config)."""

    def __init__(self, autoencoder: nn.Module):
        super().__init__()
        self.autoencoder = autoencoder
        cfg = autoencoder.config
        self.scaling_factor = float(cfg.scaling_factor if cfg.scaling_factor is not None else 1.0)
        self.shift_factor = float(cfg.shift_factor if cfg.shift_factor is not None else 0.0)

    # ---- properties ----
    @property
    def config(self) -> dict:
        """The diffusers config as a plain JSON-able dict; from_config(vae.config) rebuilds the VAE."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dict(self.autoencoder.config).items() if not k.startswith("_")}

    @property
    def latent_channels(self) -> int:
        return self.autoencoder.config.latent_channels

    @property
    def in_channels(self) -> int:
        return self.autoencoder.config.in_channels

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.autoencoder.config.block_out_channels) - 1)

    # ---- normalisation: the one place ----
    def normalize(self, z_raw: torch.Tensor) -> torch.Tensor:
        return (z_raw - self.shift_factor) * self.scaling_factor

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.scaling_factor + self.shift_factor

    # ---- encode / decode ----
    def encode(self, images: torch.Tensor) -> Posterior:
        """images in [-1, 1], (B, C, H, W) -> posterior over the raw latent (after quant_conv)."""
        _check_batch(images, self.in_channels, "images")
        ae = self.autoencoder
        moments = ae.encoder(images)
        if ae.quant_conv is not None:
            moments = ae.quant_conv(moments)
        return Posterior(*moments.chunk(2, dim=1))

    def latent(self, images: torch.Tensor, mode: str = "sample",
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised latent of images: a posterior sample (the release's choice) or its mean."""
        if mode not in LATENT_MODES:
            raise ValueError(f"mode must be one of {LATENT_MODES}, got {mode!r}")
        posterior = self.encode(images)
        raw = posterior.sample(generator) if mode == "sample" else posterior.mean
        return self.normalize(raw)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latent -> images (roughly in [-1, 1])."""
        _check_batch(z, self.latent_channels, "latent")
        ae = self.autoencoder
        raw = self.denormalize(z)
        if ae.post_quant_conv is not None:
            raw = ae.post_quant_conv(raw)
        return ae.decoder(raw)

    def freeze(self) -> "ContinuousVAE":
        """No gradients to any weight, eval mode; returns self."""
        self.requires_grad_(False)
        return self.eval()

    # ---- constructors ----
    @classmethod
    def from_config(cls, config: Mapping) -> "ContinuousVAE":
        from diffusers import AutoencoderKL

        kwargs = {k: v for k, v in dict(config).items() if not k.startswith("_")}
        try:
            return cls(AutoencoderKL(**kwargs))
        except TypeError as err:
            raise ValueError(f"not a valid diffusers AutoencoderKL config: {err}") from err

    @classmethod
    def small(cls, seed: int | None = None, **overrides) -> "ContinuousVAE":
        """Random-init small KL-VAE (SMALL_VAE, updated by overrides); block types follow the depth."""
        config = {**SMALL_VAE, **overrides}
        depth = len(config["block_out_channels"])
        config.setdefault("down_block_types", ["DownEncoderBlock2D"] * depth)
        config.setdefault("up_block_types", ["UpDecoderBlock2D"] * depth)
        if seed is None:
            return cls.from_config(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls.from_config(config)

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, subfolder: str | None = None) -> "ContinuousVAE":
        """Load a diffusers AutoencoderKL from a local directory (save_pretrained layout) or a hub id.
        With HF_HUB_OFFLINE=1 a hub id is looked up in the local cache only."""
        from diffusers import AutoencoderKL

        location = Path(path_or_hub_id).expanduser()
        if location.exists():
            return cls(_load_local(AutoencoderKL, location, subfolder))
        text = str(path_or_hub_id)
        if text.startswith(("/", ".", "~")) or text.count("/") != 1:
            raise FileNotFoundError(
                f"VAE directory {text!r} does not exist. Pass a directory written by "
                "AutoencoderKL.save_pretrained (config.json + weights) or a hub id 'org/name'.")
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        try:
            model = AutoencoderKL.from_pretrained(text, subfolder=subfolder, local_files_only=offline)
        except Exception as err:  # hub errors have many types; all mean "not available here"
            hint = "HF_HUB_OFFLINE=1, so only the local Hugging Face cache was searched. " if offline else ""
            raise FileNotFoundError(
                f"could not load the diffusers VAE {text!r}"
                f"{f' (subfolder {subfolder!r})' if subfolder else ''}: {str(err).rstrip('.')}. {hint}"
                "Download it where there is network (hf download) and pass the local "
                "directory instead.") from err
        return cls(model)


def _load_local(model_cls, location: Path, subfolder: str | None):
    directory = location / subfolder if subfolder else location
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{str(directory)!r} is not a diffusers model directory (no config.json). Pass the folder "
            "written by AutoencoderKL.save_pretrained, or its parent with subfolder='vae'.")
    from .files import reading

    with reading(directory, "diffusers AutoencoderKL directory", "save it again with save_pretrained, or "
                 "rerun the vae stage"):
        class_name = json.loads(config_file.read_text()).get("_class_name")
        if class_name not in (None, "AutoencoderKL"):
            raise ValueError(f"{str(config_file)!r} describes a {class_name}, not a diffusers AutoencoderKL")
        return model_cls.from_pretrained(str(location), subfolder=subfolder, local_files_only=True)


def posterior_latent(vae, mean, logvar, posterior: str, seed: int):
    """Normalised latent: the posterior mean, or a sample with noise drawn from ``seed`` on CPU
    (so it does not depend on the device or on how the batch is split)."""
    if posterior == "mean":
        return vae.normalize(mean)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return vae.normalize(mean + torch.exp(0.5 * logvar) * noise.to(mean.device, mean.dtype))

"""The CODA tokenizer: a frozen continuous VAE, optional LoRA adapters and a discrete quantizer.

Images in [-1, 1] go to per-scale index maps (``encode``) and back (``decode``). Saving, loading and
publishing are huggingface_hub's ``ModelHubMixin``: a directory or Hub repo holds ``config.json``,
``model.safetensors`` and a model card (``README.md``) with the measured metrics when given them.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelHubMixin, hf_hub_download
from huggingface_hub.errors import HFValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .artifacts import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME
from .files import UnreadableFileError, atomic_path, file_sha256, reading, write_json
from .lora import add_lora
from .quantizers import QuantizerOutput, build_quantizer
from .vae import LATENT_MODES, ContinuousVAE

READ_WHAT = "tokenizer directory (config.json + model.safetensors)"
READ_REMEDY = "rerun the train stage that wrote it, or point to another tokenizer directory"
PAPER_URL = "https://arxiv.org/abs/2503.17760"
CITATION = """@InProceedings{Liu_2025_ICCV,
  author    = {Liu, Zeyu and Ni, Zanlin and Hua, Yeguo and Deng, Xin and Ma, Xiao and Zhong, Cheng and Huang, Gao},
  title     = {CODA: Repurposing Continuous VAEs for Discrete Tokenization},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2025},
  pages     = {18906-18916}
}"""
# Rendered by ModelCard.from_template (Jinja); the fields come from Tokenizer.generate_model_card.
CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

A discrete image tokenizer made from a continuous VAE with `coda`, a reproduction of "CODA: Repurposing
Continuous VAEs for Discrete Tokenization" ([paper]({{ paper_url }})). Images in [-1, 1] become one
index map per scale, and the indices decode back to images.

| | |
|---|---|
{{ description }}

## Measured

{{ measured }}
{% if figure %}
![reconstructions]({{ figure }})
{% endif %}
## Use

```python
import torch
from coda import Tokenizer

tokenizer = Tokenizer.from_pretrained("{{ repo_id }}")
images = torch.rand(1, 3, {{ resolution }}, {{ resolution }}) * 2 - 1   # RGB in [-1, 1]
indices = tokenizer.encode(images)   # one LongTensor B x s x s per scale
reconstruction = tokenizer.decode(indices)
```

## Citation

```bibtex
{{ citation }}
```
"""


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(f"| {name} | {value} |" for name, value in rows)


def _measured(metrics: dict) -> str:
    """The evaluation record as a table, each missing number with the reason it is missing."""
    def number(key: str, fmt: str, reason_key: str | None = None) -> str:
        if metrics.get(key) is not None:
            return format(metrics[key], fmt)
        reason = metrics.get(reason_key or f"{key}_missing_reason")
        return f"not computed: {reason}" if reason else "not computed"

    rows = [("rFID (Inception-v3)", number("rfid", ".2f")), ("Inception Score", number("inception_score", ".2f")),
            ("rFD-VGG16", number("rfd_vgg16", ".2f")),
            ("PSNR (dB)", number("psnr", ".2f")), ("SSIM", number("ssim", ".3f")),
            ("LPIPS (VGG)", number("lpips_vgg", ".3f", "lpips_missing_reason")),
            ("LPIPS (AlexNet)", number("lpips_alex", ".3f", "lpips_missing_reason")),
            ("codebook utilization", number("codebook_utilization", ".1%")),
            ("code perplexity", number("code_perplexity", ".1f"))]
    versions = ", ".join(f"{name} {v}" for name, v in (metrics.get("library_versions") or {}).items())
    protocol = (f"{metrics.get('num_images')} validation images of `{metrics.get('dataset')}` "
                f"({metrics.get('crop')} crops) at {metrics.get('resolution')} x {metrics.get('resolution')}, "
                f"posterior {metrics.get('posterior')}, seed {metrics.get('seed')}, "
                f"FID protocol {metrics.get('fid_protocol') or 'torch-fidelity'}, "
                f"{'EMA' if metrics.get('ema') else 'live'} weights (model.safetensors sha256 "
                f"`{metrics.get('model_sha256')}`); {versions}.")
    return "| metric | value |\n|---|---|\n" + _table(rows) + "\n\n" + protocol


def tokenizer_sha256(tokenizer: "Tokenizer", directory: Path) -> str:
    """Hash of what decoding depends on: the config (less the posterior, which only encoding uses,
    and the coda version) and the weights file."""
    config = {key: value for key, value in tokenizer.config.items() if key not in ("posterior", "coda_version")}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    digest.update(file_sha256(directory / WEIGHTS_NAME).encode())
    return digest.hexdigest()


class Tokenizer(nn.Module, ModelHubMixin, library_name="coda", license="apache-2.0", paper_url=PAPER_URL,
                tags=["image-tokenizer", "vector-quantization", "coda"], model_card_template=CARD_TEMPLATE):
    """VAE (+ LoRA) + quantizer. ``lora`` is the ``add_lora`` settings the VAE was adapted with."""

    kind = "tokenizer"  # what an evaluation record calls it (coda.evaluation.ceiling: the continuous VAE)

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

    def latent(self, images: torch.Tensor, generator: torch.Generator | None = None,
               posterior: str | None = None) -> torch.Tensor:
        """Normalised VAE latent of ``images``: a posterior sample or its mean (``posterior``; default
        the tokenizer's own setting)."""
        if images.ndim != 4 or images.shape[-2:] != (self.resolution, self.resolution):
            raise ValueError(
                f"expected images of shape B x 3 x {self.resolution} x {self.resolution} in [-1, 1] "
                f"(the quantizer's last scale {self.quantizer.latent_size} times the VAE's "
                f"downsampling {self.vae.downsample_factor}), got {tuple(images.shape)}")
        return self.vae.latent(images, mode=posterior or self.posterior, generator=generator)

    def quantize(self, images: torch.Tensor, generator: torch.Generator | None = None,
                 posterior: str | None = None) -> QuantizerOutput:
        return self.quantizer(self.latent(images, generator, posterior))

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None, posterior: str | None = None):
        """Training pass: (reconstruction, quantizer output)."""
        out = self.quantize(images, generator, posterior)
        return self.vae.decode(out.f_hat), out

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None,
               posterior: str | None = None) -> list[torch.Tensor]:
        """Images -> one LongTensor of code indices (B x s x s) per scale."""
        return self.quantize(images, generator, posterior).indices

    @torch.no_grad()
    def decode(self, indices: list[torch.Tensor], scales: int | None = None) -> torch.Tensor:
        """Per-scale index maps -> images in (about) [-1, 1]. ``scales`` k decodes from the first k
        scales only: the multi-scale residual code is progressive (coarser image, fewer bits)."""
        return self.vae.decode(self.quantizer.indices_to_latent(indices, scales))

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, generator: torch.Generator | None = None,
                    posterior: str | None = None) -> torch.Tensor:
        return self(images, generator, posterior)[0]

    # -- persistence ---------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        return {"vae": self.vae.config, "lora": self.lora, "quantizer": self.quantizer.config,
                "posterior": self.posterior, "coda_version": __version__}

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's hook: weights and config; the mixin writes the card and pushes."""
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(save_directory / WEIGHTS_NAME) as tmp:
            save_file(state, tmp)
        write_json(save_directory / CONFIG_NAME, self.config)

    def save_pretrained(self, save_directory: str | Path, *, model_card_kwargs: dict | None = None,
                        **hub_kwargs) -> Path | str:
        """config.json, model.safetensors and the model card README.md (``generate_model_card``).

        ``model_card_kwargs``: ``metrics`` (the evaluate stage's metrics.json, path or dict) and
        ``figure`` (an image, copied beside the weights so the Hub shows it too). Other keywords
        are the mixin's (``push_to_hub``, ``repo_id``, ...). Returns the directory (the commit URL
        when pushing). ``push_to_hub`` is the mixin's own and calls this on a temporary folder.
        """
        directory = Path(save_directory)
        card = dict(model_card_kwargs or {})
        if card.get("figure"):
            figure = Path(card["figure"])
            with atomic_path(directory / figure.name) as tmp:
                shutil.copyfile(figure, tmp)
            card["figure"] = figure.name
        (directory / CARD_NAME).unlink(missing_ok=True)  # the mixin keeps an old card; it describes old weights
        return super().save_pretrained(directory, model_card_kwargs=card, **hub_kwargs) or directory

    def generate_model_card(self, metrics: str | Path | dict | None = None, figure: str | None = None,
                            repo_id: str = "<repo id or folder>") -> ModelCard:
        """The card: what the tokenizer is, the measured ``metrics`` (an evaluation record) if given,
        the ``figure`` (a link, relative to the card) and the citation."""
        if isinstance(metrics, (str, Path)):  # read by field name: a train stage's code need not know the record type
            with reading(metrics, "metrics file (the evaluate stage's metrics.json)",
                         "rerun the evaluate stage that wrote it"):
                metrics = json.loads(Path(metrics).read_text())
        quantizer, vae, lora = self.quantizer, self.vae, self.lora
        if metrics and (metrics.get("codebook_size"), metrics.get("scales")) != (quantizer.codebook_size,
                                                                               list(quantizer.scales)):
            raise ValueError(f"the metrics ({metrics.get('experiment')}: codebook {metrics.get('codebook_size')}, "
                             f"scales {metrics.get('scales')}) are not of this tokenizer (codebook "
                             f"{quantizer.codebook_size}, scales {list(quantizer.scales)}): pass its own metrics.json")
        bits = self.indices_per_image * math.log2(quantizer.codebook_size)
        where = {"both": "encoder and decoder", "decoder": "decoder"}
        description = _table([
            ("VAE", f"{(metrics or {}).get('vae') or 'diffusers AutoencoderKL'}: {vae.latent_channels} latent "
                    f"channels, downsampling {vae.downsample_factor}, scaling factor {vae.scaling_factor:g}"),
            ("LoRA", f"rank {lora['rank']} on {', '.join(lora['targets'])} ({where.get(lora.get('where'), 'all')})"
             if lora else "none (the VAE is unchanged)"),
            ("quantizer", f"`{quantizer.config['kind']}`, {quantizer.codebook_size} codes of {quantizer.dim} channels"),
            ("scales", ", ".join(map(str, quantizer.scales))),
            ("indices per image", str(self.indices_per_image)),
            ("bits per image", f"{bits:g} ({self.indices_per_image} x log2 {quantizer.codebook_size})"),
            ("resolution", f"{self.resolution} x {self.resolution}"),
            ("posterior", f"{self.posterior} (what `encode` tokenizes)"),
            ("coda version", self.config["coda_version"])])
        measured = _measured(metrics) if metrics else (
            "Not evaluated yet: `coda evaluate` writes metrics.json; save again with "
            "`model_card_kwargs={\"metrics\": \"metrics.json\"}`.")
        title = f"CODA tokenizer: {metrics['experiment']}" if metrics and metrics.get("experiment") else "CODA tokenizer"
        return super().generate_model_card(title=title, description=description, measured=measured, figure=figure,
                                           repo_id=repo_id, resolution=self.resolution, citation=CITATION)

    @classmethod
    def from_config(cls, config: dict) -> "Tokenizer":
        vae = ContinuousVAE.from_config(config["vae"])
        if config.get("lora"):
            add_lora(vae, **config["lora"])
        return cls(vae, build_quantizer(**config["quantizer"]), config.get("lora"),
                   config.get("posterior", "sample"))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **hub_kwargs) -> "Tokenizer":
        """A local directory or a Hub repo id ("org/name"), with the mixin's ``revision``,
        ``cache_dir``, ``local_files_only``, ``force_download``, ``token``; with HF_HUB_OFFLINE=1 a
        repo id is read from the local Hugging Face cache only."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        except json.JSONDecodeError as error:  # the mixin parses config.json before our hook runs
            raise UnreadableFileError(f"{pretrained_model_name_or_path} is not a readable {READ_WHAT} "
                                      f"({CONFIG_NAME}: {error}); {READ_REMEDY}") from error
        except HFValidationError as error:  # a path that does not exist is no repo id either
            raise FileNotFoundError(
                f"{pretrained_model_name_or_path} not found: give a tokenizer directory (as written by "
                f"Tokenizer.save_pretrained) or a Hub repo id 'org/name'") from error

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision, cache_dir, force_download, local_files_only, token,
                         config: dict | None = None, **config_entries) -> "Tokenizer":
        """The mixin's hook, given config.json as ``config`` (and its entries again as keywords, because
        they share the names of ``__init__``'s parameters; ``from_config`` builds from the whole)."""
        directory = Path(model_id)
        if directory.is_dir():
            weights = directory / WEIGHTS_NAME
        else:
            weights = Path(hf_hub_download(model_id, WEIGHTS_NAME, revision=revision, cache_dir=cache_dir,
                                           force_download=force_download, local_files_only=local_files_only,
                                           token=token))
            directory = weights.parent
        if config is None or not weights.is_file():
            raise FileNotFoundError(
                f"{directory / CONFIG_NAME if config is None else weights} not found: a tokenizer directory "
                f"holds {CONFIG_NAME} and {WEIGHTS_NAME}, as written by Tokenizer.save_pretrained")
        with reading(directory, READ_WHAT, READ_REMEDY):
            tokenizer = cls.from_config(config)
            tokenizer.load_state_dict(load_file(weights), strict=True)
        return tokenizer.eval()

    @classmethod
    def from_official(cls, vae_file: str | Path | None = None, quantizer_file: str | Path | None = None,
                      variant: str = "f16", posterior: str = "sample", *, repo_id: str | None = None,
                      revision: str | None = None, cache_dir: str | Path | None = None,
                      local_files_only: bool = False, token: str | None = None) -> "Tokenizer":
        """The authors' released ``vae_ema.pth`` + ``quantizer_ema.pth`` (read safely), of ``variant``
        f16 (MAR KL-16, V=16384) or f8 (FLUX.1 VAE, V=65536).

        Local files, or files of a Hub repository ``repo_id`` through ``hf_hub_download`` (with
        ``revision``, ``cache_dir``, ``local_files_only``, ``token``; HF_HUB_OFFLINE=1 reads the local
        cache only), where the file names default to the variant's in the authors' release. Without
        files or ``repo_id``, the authors' repository (``coda.compat.release.RELEASED_REPO``):
        ``Tokenizer.from_official(variant="f8")``."""
        from .compat.io import read_state_dict
        from .compat.quantizer import load_official_quantizer
        from .compat.release import OFFICIAL_SETTINGS, RELEASED_FILES, RELEASED_REPO
        from .compat.vae import load_official_vae

        if variant not in OFFICIAL_SETTINGS:
            raise ValueError(f"variant must be one of {sorted(OFFICIAL_SETTINGS)}, got {variant!r}")
        if repo_id is None and vae_file is None and quantizer_file is None:
            repo_id = RELEASED_REPO
        if repo_id is not None:
            vae_file, quantizer_file = (
                hf_hub_download(repo_id, str(name or default), revision=revision, cache_dir=cache_dir,
                                local_files_only=local_files_only, token=token)
                for name, default in zip((vae_file, quantizer_file), RELEASED_FILES[variant]))
        elif vae_file is None or quantizer_file is None:
            raise ValueError("give both vae_file and quantizer_file, or a Hub repo_id (the authors' is "
                             f"{RELEASED_REPO!r})")
        settings = OFFICIAL_SETTINGS[variant]
        vae = load_official_vae(read_state_dict(vae_file), settings["vae"])
        quantizer = load_official_quantizer(read_state_dict(quantizer_file), settings["quantizer"])
        lora = {"rank": settings["vae"]["lora_rank"], "targets": list(settings["vae"]["lora_targets"]),
                "where": "both"}
        return cls(vae, quantizer, lora, posterior).eval()

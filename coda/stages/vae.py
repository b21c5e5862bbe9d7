"""The vae stage: every VAE of the scale as a local diffusers folder and its ``vae_info.json`` (this
module is its one writer); and ``coda pretrain-vae``, which builds, once, a VAE the stage then reads."""
from __future__ import annotations

from pathlib import Path

from ..artifacts import VAE_DIR, VAE_INFO
from ..config import DEFAULT_VAE, ParamsError, scale_block, scale_vaes, vae_location
from ..data.datasets import read_meta, train_dataset
from ..files import directory_sha256, write_json
from ..vae import ContinuousVAE
from ..vae_train import check_pretrained, pretrain_vae, train_small_vae

LABELS = {"train_small": "small KL-VAE (trained on the demo photos)", "mar": "MAR KL-16 VAE"}


def write_vaes(params: dict, *, prepared: str, out: str) -> None:
    """Every VAE of the scale: its `vae` into ``out``, each of `extra_vaes` into ``out/<name>``."""
    for name, cfg in scale_vaes(params).items():
        write_vae(name, cfg, prepared, vae_location(out, name), params["scale"])


def write_vae(name: str, cfg: dict, prepared, out: Path, scale: str) -> None:
    key = f"scales.{scale}.{'vae' if name == DEFAULT_VAE else 'extra_vaes.' + name}"
    if "recipe" in cfg:  # a VAE this project pretrained and ships: refuse a stale or edited one first
        if "path" not in cfg:
            raise ParamsError(f"{key}.path is required with a recipe: where coda pretrain-vae writes the VAE")
        check_pretrained(cfg["path"], cfg["recipe"], read_meta(prepared)["resolution"], key)
    out.mkdir(parents=True, exist_ok=True)
    info = {}
    if cfg["source"] == "train_small":
        vae, info = train_small_vae(train_dataset(prepared), out, architecture=cfg.get("architecture", {}),
                                    **cfg.get("train", {}))
    else:
        if "path" not in cfg:
            raise ParamsError(f"{key}.path is required for source: {cfg['source']}")
        if cfg["source"] == "mar":
            from ..compat.vae import load_mar_vae

            vae = load_mar_vae(cfg["path"])
        else:
            vae = ContinuousVAE.from_pretrained(cfg["path"], subfolder=cfg.get("subfolder"))
        vae.autoencoder.save_pretrained(out / VAE_DIR)
    info.update(source=cfg["source"], path=cfg.get("path"), hash=directory_sha256(out / VAE_DIR),
                latent_channels=vae.latent_channels, downsample_factor=vae.downsample_factor,
                scaling_factor=vae.scaling_factor, shift_factor=vae.shift_factor)
    if "subfolder" in cfg:
        info["subfolder"] = cfg["subfolder"]
    # how tables and model cards name this VAE
    where = "/".join(p for p in (cfg.get("path"), cfg.get("subfolder")) if p)
    info["label"] = (f"small KL-VAE pretrained on the demo photos ({cfg['path']})" if "recipe" in cfg
                     else LABELS.get(cfg["source"], where))
    write_json(out / VAE_INFO, info)
    print(f"VAE {name!r} ready in {out / VAE_DIR} (hash {info['hash'][:12]})")


def pretrain(params: dict, *, out: str | None = None) -> None:
    """Not a stage: builds, once, the pretrained VAE that the scale's `vae` stage then reads."""
    scale = params["scale"]
    cfg = scale_block(params)["vae"]
    if "recipe" not in cfg:
        raise ParamsError(f"scales.{scale}.vae has no recipe: coda pretrain-vae builds a VAE from "
                          f"scales.<scale>.vae.recipe (see scales.demo.vae)")
    if scale_block(params)["prepare"]["source"] != "demo":
        raise ParamsError(f"coda pretrain-vae trains on the bundled demo photos; scales.{scale}.prepare.source "
                          "is not demo")
    target = Path(out or cfg["path"])
    command = " ".join(["coda pretrain-vae", f"--scale {scale}"] + ([f"--out {out}"] if out else []))
    provenance = pretrain_vae(cfg["recipe"], scale_block(params)["prepare"]["resolution"], target, command=command)
    print(f"pretrained VAE in {target}: {provenance['steps']} steps in {provenance['train_seconds']:.0f} s, "
          f"weights sha256 {provenance['weights_sha256'][:12]}")

"""`coda`: one command per pipeline stage. Snakemake rules and DVC stages call exactly these.

Every command reads and validates params.yaml first, so bad parameters stop the run before any
computation, whichever engine started it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .config import ParamsError, experiment_config, load_params, scale_block


def _threads(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def cmd_prepare(args, params) -> None:
    from .data import prepare_demo, prepare_folder

    cfg = dict(scale_block(params)["prepare"])
    policy = params.get("prepare", {}).get("on_bad_image", "skip")
    source = cfg.pop("source")
    if source == "demo":
        cfg.pop("crop", None)
        meta = prepare_demo(args.out, on_bad_image=policy, **cfg)
    else:
        for key in ("train_dir", "val_dir"):
            if key not in cfg:
                raise ParamsError(f"scales.{params['scale']}.prepare.{key} is required for source: folder")
        cfg.pop("seed", None), cfg.pop("crops_per_train_photo", None), cfg.pop("crops_per_val_photo", None)
        meta = prepare_folder(cfg.pop("train_dir"), cfg.pop("val_dir"), args.out, on_bad_image=policy, **cfg)
    print(json.dumps({k: meta[k] for k in meta if k in ("dataset", "counts", "resolution")}, default=str))


def cmd_vae(args, params) -> None:
    from .data.datasets import train_dataset
    from .hashing import directory_sha256
    from .vae import ContinuousVAE

    cfg = scale_block(params)["vae"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg["source"] == "train_small":
        from .vae_train import train_small_vae

        vae = train_small_vae(train_dataset(args.prepared), out, architecture=cfg.get("architecture", {}),
                              **cfg.get("train", {}))
    else:
        if "path" not in cfg:
            raise ParamsError(f"scales.{params['scale']}.vae.path is required for source: {cfg['source']}")
        if cfg["source"] == "mar":
            vae = ContinuousVAE.from_mar(cfg["path"])
        else:
            vae = ContinuousVAE.from_pretrained(cfg["path"], subfolder=cfg.get("subfolder"))
        vae.autoencoder.save_pretrained(out / "vae")
    info_path = out / "vae_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info.update(source=cfg["source"], path=cfg.get("path"), hash=directory_sha256(out / "vae"),
                latent_channels=vae.latent_channels, downsample_factor=vae.downsample_factor,
                scaling_factor=vae.scaling_factor, shift_factor=vae.shift_factor)
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    print(f"VAE ready in {out / 'vae'} (hash {info['hash'][:12]})")


def cmd_cache(args, params) -> None:
    from .cache import cache_latents
    from .data.datasets import ArrayImages, read_meta, train_dataset
    from .vae import ContinuousVAE

    cfg = dict(scale_block(params).get("cache", {}))
    vae_dir = Path(args.vae)
    info = json.loads((vae_dir / "vae_info.json").read_text())
    vae = ContinuousVAE.from_pretrained(vae_dir / "vae").freeze()
    # Fixed crops: the cache holds one crop per training image (seeded), not a fresh one per epoch.
    splits = {"train": train_dataset(args.prepared), "val": ArrayImages(Path(args.prepared) / "val.npy")}
    meta = read_meta(args.prepared)
    preprocessing = {k: meta.get(k) for k in ("dataset", "resolution", "crop", "seed")}
    cache_latents(vae, splits, args.out, vae_hash=info["hash"], preprocessing=preprocessing,
                  device=_device(), **cfg)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


COMMANDS = {
    "prepare": (cmd_prepare, "images -> train set and the preprocessed uint8 validation set",
                [("--out", {"required": True})]),
    "vae": (cmd_vae, "the frozen continuous VAE as a local diffusers directory (trains one at demo scale)",
            [("--prepared", {"required": True}), ("--out", {"required": True})]),
    "cache": (cmd_cache, "posterior moments of the frozen VAE for train and val images",
              [("--prepared", {"required": True}), ("--vae", {"required": True}), ("--out", {"required": True})]),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coda", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text, arguments) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
        p.add_argument("--threads", type=int, default=int(os.environ.get("CODA_THREADS", 0)) or None,
                       help="torch CPU threads (default: torch's choice)")
        for flag, kwargs in arguments:
            p.add_argument(flag, **kwargs)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.params)
    except (ParamsError, FileNotFoundError) as err:
        print(f"coda {args.command}: {err}", file=sys.stderr)
        return 2
    _threads(args)
    COMMANDS[args.command][0](args, params)
    return 0


if __name__ == "__main__":
    sys.exit(main())

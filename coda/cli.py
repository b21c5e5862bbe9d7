"""`coda`: one command per pipeline stage. Snakemake rules and DVC stages call exactly these.

Every stage reads and validates params.yaml first, so bad parameters stop the run before any
computation, whichever engine started it. `coda reconstruct / encode / decode` work on your own
files with a trained tokenizer and need no params.yaml (coda/image_files.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .config import (DEFAULT_VAE, ParamsError, at_scale, ceiling_name, experiment_config, experiment_vae,
                     load_params, scale_block, scale_experiments, scale_vaes, vae_location)
from .devices import check_gpu, claim_gpu
from .files import UnreadableFileError, out_of_space, write_json, write_text
from .inputs import check_external_inputs

GPU_COMMANDS = ("vae", "cache", "train", "reference", "evaluate", "tokenize")


class _Tee:
    """Write to the console and to the stage's log file (DVC has no `log:`; Snakemake's is this file)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            try:
                s.write(text)
                s.flush()
            except OSError:  # the log file's disk is full: keep the console, so the error message still shows
                if s is self.streams[0]:
                    raise
                self.streams = tuple(k for k in self.streams if k is not s)
        return len(text)

    def flush(self):
        for s in self.streams:
            try:
                s.flush()
            except OSError:
                if s is self.streams[0]:
                    raise

    def isatty(self):
        return False


def _log_to(path: str | None) -> None:
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "w", buffering=1)
    sys.stdout, sys.stderr = _Tee(sys.__stdout__, handle), _Tee(sys.__stderr__, handle)


def cmd_fetch(args, params) -> None:
    from .fetch import fetch

    fetch(params, args.out)


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
    """Every VAE of the scale: its `vae` into --out, each of `extra_vaes` into --out/<name>."""
    for name, cfg in scale_vaes(params).items():
        _write_vae(name, cfg, args.prepared, vae_location(args.out, name), params["scale"])


def _write_vae(name: str, cfg: dict, prepared, out: Path, scale: str) -> None:
    from .data.datasets import read_meta, train_dataset
    from .files import directory_sha256
    from .vae import ContinuousVAE

    key = f"scales.{scale}.{'vae' if name == DEFAULT_VAE else 'extra_vaes.' + name}"
    if "recipe" in cfg:  # a VAE this project pretrained and ships: refuse a stale or edited one first
        from .vae_train import check_pretrained

        if "path" not in cfg:
            raise ParamsError(f"{key}.path is required with a recipe: where coda pretrain-vae writes the VAE")
        check_pretrained(cfg["path"], cfg["recipe"], read_meta(prepared)["resolution"], key)
    out.mkdir(parents=True, exist_ok=True)
    if cfg["source"] == "train_small":
        from .vae_train import train_small_vae

        vae = train_small_vae(train_dataset(prepared), out, architecture=cfg.get("architecture", {}),
                              **cfg.get("train", {}))
    else:
        if "path" not in cfg:
            raise ParamsError(f"{key}.path is required for source: {cfg['source']}")
        if cfg["source"] == "mar":
            from .compat.vae import load_mar_vae

            vae = load_mar_vae(cfg["path"])
        else:
            vae = ContinuousVAE.from_pretrained(cfg["path"], subfolder=cfg.get("subfolder"))
        vae.autoencoder.save_pretrained(out / "vae")
    info_path = out / "vae_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info.update(source=cfg["source"], path=cfg.get("path"), hash=directory_sha256(out / "vae"),
                latent_channels=vae.latent_channels, downsample_factor=vae.downsample_factor,
                scaling_factor=vae.scaling_factor, shift_factor=vae.shift_factor)
    if "subfolder" in cfg:
        info["subfolder"] = cfg["subfolder"]
    if "recipe" in cfg:
        info["label"] = f"small KL-VAE pretrained on the demo photos ({cfg['path']})"
    write_json(info_path, info)
    print(f"VAE {name!r} ready in {out / 'vae'} (hash {info['hash'][:12]})")


def pretrain_vae_command(args, params) -> None:
    """Not a stage: builds, once, the pretrained VAE that the scale's `vae` stage then reads."""
    from .vae_train import pretrain_vae

    scale = params["scale"]
    cfg = scale_block(params)["vae"]
    if "recipe" not in cfg:
        raise ParamsError(f"scales.{scale}.vae has no recipe: coda pretrain-vae builds a VAE from "
                          f"scales.<scale>.vae.recipe (see scales.demo.vae)")
    if scale_block(params)["prepare"]["source"] != "demo":
        raise ParamsError(f"coda pretrain-vae trains on the bundled demo photos; scales.{scale}.prepare.source "
                          "is not demo")
    out = Path(args.out or cfg["path"])
    command = " ".join(["coda pretrain-vae", f"--scale {scale}"] + ([f"--out {args.out}"] if args.out else []))
    provenance = pretrain_vae(cfg["recipe"], scale_block(params)["prepare"]["resolution"], out, command=command)
    print(f"pretrained VAE in {out}: {provenance['steps']} steps in {provenance['train_seconds']:.0f} s, "
          f"weights sha256 {provenance['weights_sha256'][:12]}")


def cmd_cache(args, params) -> None:
    import torch

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
                  device="cuda" if torch.cuda.is_available() else "cpu", **cfg)


def cmd_train(args, params) -> None:
    from .train.stage import save_released, train

    experiment = experiment_config(params, args.experiment)
    out = Path(args.out)
    if not at_scale(params, experiment):
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        _no_row(params, experiment, out / "tokenizer")
        write_text(out / "train_log.tsv", "step\n")
    elif experiment.get("kind", "train") == "released":
        save_released(experiment, args.out)
    else:
        vae_dir = vae_location(args.vae, experiment_vae(experiment)) / "vae"
        train(experiment, vae_dir, args.out, images=args.prepared, latents=args.cache)


NO_ROW = "not_at_this_scale.json"


def _no_row(params, experiment: dict, folder: Path) -> None:
    """An experiment whose VAE this scale does not declare has no row here. DVC gives every scale the same
    stages, so its train and evaluate stages still run: they write only this note into their outputs."""
    reason = (f"experiment {experiment['name']!r} trains on VAE {experiment_vae(experiment)!r}, which scale "
              f"{params['scale']!r} does not declare (its VAEs: {sorted(scale_vaes(params))})")
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / NO_ROW, {"experiment": experiment["name"], "scale": params["scale"], "reason": reason})
    print(f"{reason}: no row at this scale, nothing to do")


def cmd_reference(args, params) -> None:
    from .evaluation.evaluate import compute_reference
    from .evaluation.reference import REFERENCE_FILE

    cfg, settings = scale_block(params).get("evaluate", {}), params.get("evaluate", {})
    metadata = compute_reference(Path(args.prepared) / "val.npy", Path(args.out) / REFERENCE_FILE,
                                 batch_size=cfg.get("batch_size", 16), max_images=cfg.get("max_images"),
                                 inception_weights=settings.get("inception_weights"),
                                 fid_protocol=settings.get("fid_protocol", "torch-fidelity"),
                                 vgg16=cfg.get("rfd_vgg16", True))
    print(json.dumps({"num_images": metadata["num_images"], "feature_sets": metadata["feature_sets"]}))


def cmd_evaluate(args, params) -> None:
    """One experiment's tokenizer; or, for --experiment vae, every VAE of the scale itself (the ceiling
    rows): its `vae` into --out, each of `extra_vaes` into --out/<name>."""
    from .evaluation.ceiling import ContinuousCeiling
    from .tokenizer import Tokenizer
    from .vae import ContinuousVAE

    out = Path(args.out)
    if args.experiment == DEFAULT_VAE:
        posterior = params["experiments"]["base"].get("posterior", "sample")
        for name in scale_vaes(params):
            vae_dir = vae_location(args.vae, name)
            _evaluate(args, params, ContinuousCeiling(ContinuousVAE.from_pretrained(vae_dir / "vae")), vae_dir,
                      vae_location(out, name), posterior,
                      experiment=ceiling_name(name), ema=None, method="continuous VAE", model_path=str(vae_dir))
        return
    if not args.tokenizer:
        raise SystemExit("coda evaluate: --tokenizer is required for an experiment")
    experiment = experiment_config(params, args.experiment)
    if not at_scale(params, experiment):
        _no_row(params, experiment, out)
        return
    # trained runs save EMA weights; the release ships *_ema.pth
    _evaluate(args, params, Tokenizer.from_pretrained(args.tokenizer),
              vae_location(args.vae, experiment_vae(experiment)), out, experiment.get("posterior", "sample"),
              experiment=args.experiment, ema=True, method=None, model_path=args.tokenizer)


VAE_LABELS = {"train_small": "small KL-VAE (trained on the demo photos)", "mar": "MAR KL-16 VAE"}


def _evaluate(args, params, tokenizer, vae_dir: Path, out: Path, posterior: str, *, experiment: str, ema, method,
              model_path: str) -> None:
    from .data.datasets import read_meta
    from .evaluation.evaluate import COUNTS_FILE, METRICS_FILE, NPZ_FILE, SAMPLES_FILE, evaluate_tokenizer
    from .evaluation.reference import REFERENCE_FILE

    cfg = scale_block(params).get("evaluate", {})
    settings = params.get("evaluate", {})
    prepared = read_meta(args.prepared)
    info = json.loads((vae_dir / "vae_info.json").read_text())
    label = (info.get("label") or VAE_LABELS.get(info["source"])
             or "/".join(p for p in (info.get("path"), info.get("subfolder")) if p))
    evaluate_tokenizer(
        tokenizer, Path(args.prepared) / "val.npy", out / METRICS_FILE, batch_size=cfg.get("batch_size", 16),
        inception_weights=settings.get("inception_weights"), posterior=posterior, seed=settings.get("seed", 0),
        recon_samples_out=out / SAMPLES_FILE, num_recon_samples=cfg.get("reconstructions", 8),
        code_counts_out=out / COUNTS_FILE if tokenizer.kind == "tokenizer" else None,  # the ceiling has no codes
        max_images=cfg.get("max_images"), progressive=settings.get("progressive", "none"),
        reference_file=Path(args.reference) / REFERENCE_FILE,
        fid_protocol=settings.get("fid_protocol", "torch-fidelity"),
        npz_out=out / NPZ_FILE if cfg.get("export_npz", False) else None, rfd_vgg16=cfg.get("rfd_vgg16", True),
        meta={"experiment": experiment, "dataset": prepared.get("dataset"), "crop": prepared.get("crop"),
              "ema": ema, "method": method, "model_path": model_path, "vae": label})


def cmd_tokenize(args, params) -> None:
    import torch

    from .data.datasets import ArrayImages, class_labels, read_meta, train_dataset
    from .tokenizer import Tokenizer, tokenizer_sha256
    from .token_files import tokenize_splits

    block = scale_block(params)
    cfg = dict(block.get("tokenize", {}))
    tokenizer = Tokenizer.from_pretrained(args.tokenizer)
    posterior = experiment_config(params, args.experiment).get("posterior", tokenizer.posterior)  # as evaluated
    # The fixed train crops of the cache stage; val as evaluated. The noise stream is evaluate's (coda/token_files.py).
    splits = {"train": train_dataset(args.prepared), "val": ArrayImages(Path(args.prepared) / "val.npy")}
    meta = read_meta(args.prepared)
    preprocessing = {k: meta.get(k) for k in ("dataset", "resolution", "crop", "train_crop", "seed")}
    tokenize_splits(tokenizer, splits, args.out, tokenizer_sha256=tokenizer_sha256(tokenizer, Path(args.tokenizer)),
                    preprocessing=preprocessing, posterior=posterior, seed=params.get("evaluate", {}).get("seed", 0),
                    batch_size=block.get("evaluate", {}).get("batch_size", 16),
                    device="cuda" if torch.cuda.is_available() else "cpu", **cfg,
                    **dict(zip(("classes", "labels"), class_labels(args.prepared))))


def cmd_report(args, params) -> None:
    from .evaluation.evaluate import COUNTS_FILE, METRICS_FILE, SAMPLES_FILE
    from .report.build import build_report

    names = scale_experiments(params)
    train, evaluated = Path(args.train), Path(args.eval)
    folders = {ceiling_name(v): vae_location(evaluated / DEFAULT_VAE, v) for v in scale_vaes(params)}
    folders |= {n: evaluated / n for n in names}
    build_report(
        {n: folder / METRICS_FILE for n, folder in folders.items()}, args.reported, args.out,
        experiments_meta={name: experiment_config(params, name) for name in names},
        train_logs={n: train / n / "train_log.tsv" for n in names},
        recon_samples={"original": Path(args.prepared) / "val.npy",
                       **{n: folder / SAMPLES_FILE for n, folder in folders.items()}},
        code_counts={n: evaluated / n / COUNTS_FILE for n in names},
        tokenizers={n: train / n / "tokenizer" for n in names})


# Every flag is required but --tokenizer for evaluate: the VAE's own evaluation (--experiment vae) has none.
COMMANDS = {
    "fetch": (cmd_fetch, "download and verify the external weights the scale needs (none at demo scale) into "
              "the standard caches, and record them", ["--out"]),
    "prepare": (cmd_prepare, "images -> train set and the preprocessed uint8 validation set", ["--out"]),
    "vae": (cmd_vae, "the frozen continuous VAE as a local diffusers directory (trains one at demo scale)",
            ["--prepared", "--out"]),
    "cache": (cmd_cache, "posterior moments of the frozen VAE for train and val images",
              ["--prepared", "--vae", "--out"]),
    "train": (cmd_train, "train one experiment (resumes from its checkpoint when rerun)",
              ["--experiment", "--prepared", "--vae", "--cache", "--out"]),
    "reference": (cmd_reference, "Inception and VGG16 statistics of the validation images, once for every evaluation",
                  ["--prepared", "--out"]),
    "evaluate": (cmd_evaluate, "metrics of one experiment's tokenizer, or of the continuous VAE (--experiment vae)",
                 ["--experiment", "--prepared", "--vae", "--reference", "--tokenizer", "--out"]),
    "tokenize": (cmd_tokenize, "one experiment's tokenizer over the prepared train and val sets -> token shards",
                 ["--experiment", "--prepared", "--tokenizer", "--out"]),
    "report": (cmd_report, "table1.csv, ablation.csv, figures and README from all metrics files",
               ["--reported", "--prepared", "--train", "--eval", "--out"]),
}


# What each stage flag names (the pipeline passes work/<scale>/<stage> folders).
FLAG_HELP = {
    "--out": "folder (or file) the stage writes its outputs to",
    "--experiment": "an experiment of params.yaml (experiments.<name>); for evaluate also `vae`, the VAE itself",
    "--prepared": "the prepare stage's folder (work/<scale>/prepared)",
    "--vae": "the vae stage's folder (work/<scale>/vae)",
    "--cache": "the cache stage's folder of VAE latents (work/<scale>/cache)",
    "--reference": "the reference stage's folder of validation-set statistics (work/<scale>/reference)",
    "--tokenizer": "a trained tokenizer folder (work/<scale>/train/<experiment>/tokenizer); not with --experiment vae",
    "--reported": "the paper's published numbers (references/reported.csv)",
    "--train": "the train stages' parent folder (work/<scale>/train)",
    "--eval": "the evaluate stages' parent folder (work/<scale>/eval)",
}


# Run once by a maintainer, not by the DAG (tests/test_pipeline.py reads every cmd_* function as a stage).
BUILD_COMMANDS = {
    "pretrain-vae": (pretrain_vae_command, "train the scale's pretrained VAE from scales.<scale>.vae.recipe "
                     "into its path (the demo's models/demo-vae; make demo-vae), on the CPU"),
}


# The generator's commands (bodies in coda/generation/commands.py): train-generator reads the scale's
# `generator` block of params.yaml, sample needs no params.yaml. Not DAG stages yet.
GENERATION_COMMANDS = {
    "train-generator": ("train the class-conditional next-scale generator on token files (resumes when rerun)",
                        "add_train_arguments"),
    "sample": ("a generator's class-conditional samples: PNGs, their tokens and an ADM-style npz; reports images/s",
               "add_sample_arguments"),
}


def run_on_files(args) -> None:
    from . import image_files

    common = {"tokenizer_dir": args.tokenizer, "out": args.out, "device": args.device}
    if args.command == "decode":
        image_files.decode(args.inputs, **common)
        return
    options = {"policy": args.policy, "posterior": args.posterior, "seed": args.seed}
    if args.command == "reconstruct":
        options["sheet"] = args.sheet
    getattr(image_files, args.command)(args.inputs, **common, **options)


# Commands on your own files: no params.yaml, and not pipeline stages (tests/test_pipeline.py reads
# every cmd_* function as one), so they are listed apart.
FILE_COMMANDS = {
    "reconstruct": ("images or folders of them -> reconstructions as PNG (with --sheet: input | output too)",
                    "image files or folders"),
    "encode": ("images or folders of them -> token files (.safetensors) that `coda decode` reads",
               "image files or folders"),
    "decode": ("token files or folders of them -> PNGs in the framing they were encoded with",
               "token files (.safetensors) or folders"),
}


def _add_file_arguments(p: argparse.ArgumentParser, name: str, inputs_help: str) -> None:
    from .data.framing import FIT_POLICIES

    p.add_argument("inputs", nargs="+", metavar="PATH", help=inputs_help)
    p.add_argument("--tokenizer", required=True, help="a tokenizer directory (config.json + model.safetensors)")
    p.add_argument("--out", required=True, help="folder for the outputs and <command>_report.json")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    if name == "decode":
        return
    p.add_argument("--policy", choices=FIT_POLICIES, default=FIT_POLICIES[0],
                   help="to the tokenizer's square: resize the short side and crop the centre (default), or "
                        "resize the long side and pad, the padding removed after decoding")
    p.add_argument("--posterior", choices=("sample", "mean"),
                   help="tokenize a posterior sample or its mean (default: the tokenizer's own setting)")
    p.add_argument("--seed", type=int, default=0, help="seed of each image's posterior sample (default: 0)")
    if name == "reconstruct":
        p.add_argument("--sheet", action="store_true", help="also write sheets/<name>.png: input beside output")


def _add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log", help="also write everything printed to this file")
    p.add_argument("--debug", action="store_true", default=os.environ.get("CODA_DEBUG", "") not in ("", "0"),
                   help="show the traceback of a user error too (also CODA_DEBUG=1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coda", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"coda {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text, arguments) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
        p.add_argument("--scale", help="override params.yaml's `scale` (Snakemake passes --config scale=...)")
        _add_common_arguments(p)
        for flag in arguments:
            p.add_argument(flag, required=flag != "--tokenizer" or name != "evaluate", help=FLAG_HELP[flag])
    for name, (_, help_text) in BUILD_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
        p.add_argument("--scale", help="override params.yaml's `scale`")
        p.add_argument("--out", help="where to write it (default: the scale's vae.path)")
        _add_common_arguments(p)
    from .generation import commands as generation

    for name, (help_text, add_arguments) in GENERATION_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == "train-generator":
            p.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
            p.add_argument("--scale", help="override params.yaml's `scale`")
        getattr(generation, add_arguments)(p)
        _add_common_arguments(p)
    for name, (help_text, inputs_help) in FILE_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_file_arguments(p, name, inputs_help)
        _add_common_arguments(p)
    return parser


def main(argv=None) -> int:
    """Run one stage or file command. A problem the user can fix (a bad parameter, a missing or unreadable file, a bad
    image under on_bad_image: error, a diverged run) ends with one message and exit status 2 (3 for a
    non-finite loss); a bug keeps its traceback."""
    args = build_parser().parse_args(argv)
    _log_to(args.log)
    try:
        if args.command in FILE_COMMANDS:
            run_on_files(args)
            return 0
        if args.command == "sample":
            from .generation.commands import sample

            sample(args)
            return 0
        params = load_params(args.params, scale=args.scale)
        if args.command in COMMANDS:  # a build command makes its input
            check_external_inputs(params)  # DVC's up-front refusal; Snakemake runs it in onstart too
        if args.command in GPU_COMMANDS:
            claim_gpu()  # before anything touches CUDA: this job's own card, never one another job holds
            experiment = getattr(args, "experiment", None)
            device = experiment_config(params, experiment if experiment in params["experiments"] else "base")
            check_gpu(params["scale"], scale_block(params).get("require_gpu", False),
                      device.get("train", {}).get("device", "auto"))
        if args.command == "train-generator":
            from .generation.commands import train_generator

            train_generator(args, params)
            return 0
        (COMMANDS | BUILD_COMMANDS)[args.command][0](args, params)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"coda {args.command}: interrupted; every file it finished is kept and none is left half-written: "
              "rerun the same command to go on (training resumes from its last checkpoint)", file=sys.stderr)
        return 130
    except Exception as error:
        if not args.debug and (reason := out_of_space(error)):
            print(f"coda {args.command}: error: {reason}, then rerun the same command: nothing was left "
                  "half-written, and finished files are kept", file=sys.stderr)
            return 2
        if args.debug or not isinstance(error, user_errors()):
            raise
        print(f"coda {args.command}: error: {error}", file=sys.stderr)
        return 3 if type(error).__name__ == "NonFiniteLossError" else 2
    return 0


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean the user has something to fix; imported only when one is raised."""
    from .compat.ldm import LayoutError
    from .data.bad_images import BadImageError
    from .devices import NoGpuError
    from .inputs import MissingPackageError
    from .evaluation.reference import StaleReferenceError
    from .generation.commands import GenerationInputError
    from .train.loop import NonFiniteLossError

    return (ParamsError, FileNotFoundError, NotADirectoryError, UnreadableFileError, LayoutError, BadImageError,
            NonFiniteLossError, StaleReferenceError, GenerationInputError, NoGpuError, MissingPackageError)

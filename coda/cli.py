"""`coda`: one command per pipeline stage. Snakemake rules and DVC stages call exactly these.

Every stage reads and validates params.yaml first, so bad parameters stop the run before any
computation, whichever engine started it. `coda reconstruct / encode / decode` work on your own
files with a trained tokenizer and need no params.yaml (coda/image_files.py).
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
from typing import NamedTuple

from . import __version__
from .config import experiment_config, load_params, scale_block, train_processes
from .devices import check_gpu, claim_gpu
from .errors import UserError
from .external_inputs import check_external_inputs
from .files import out_of_space
from .stage_log import log_to
from .train.launch import in_rank, run_ranks


def pin_cpu(block: dict) -> None:
    """The scale's CPU threads and instruction set (``threads``, ``cpu_isa``), before torch computes
    anything (in each rank of a train job too, so a rank runs as many threads as a 1-process job): a CPU run's bits depend on both, and Snakemake and DVC both run these commands, so both
    engines compute the same bits, and another x86-64 machine too as far as the pin reaches (params.yaml)."""
    isa, threads = block.get("cpu_isa"), block.get("threads")
    if isa and platform.machine().lower() in ("x86_64", "amd64"):
        os.environ.setdefault("ATEN_CPU_CAPABILITY", isa)  # read at torch's first kernel; a user's own value wins
        os.environ.setdefault("MKL_CBWR", isa.upper() if isa != "default" else "COMPATIBLE")
    if threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # processes this one starts (loader workers, torchrun)
            os.environ[name] = str(threads)
        import torch

        torch.set_num_threads(threads)
        if torch.get_num_interop_threads() != threads:
            try:
                torch.set_num_interop_threads(threads)
            except RuntimeError:  # only before the first inter-op work; nothing has run yet in a stage
                pass


class Stage(NamedTuple):
    """A command on params.yaml: ``function`` of ``module`` gets the params and one keyword per flag."""
    module: str
    function: str
    help: str
    flags: tuple[str, ...]
    gpu: bool = False  # it claims a card of its own first (coda/devices.py)


# The pipeline, in DAG order. Every flag is required but --tokenizer for evaluate: the VAE's own
# evaluation (--experiment vae) has none. Each stage imports only what it runs: tests/test_layout.py
# derives its DVC code dependencies from its module.
STAGES = {
    "fetch": Stage("coda.fetch", "fetch", "download and verify the external weights the scale needs (none at demo "
                   "scale) into the standard caches, and record them", ("--out",)),
    "prepare": Stage("coda.stages.prepare", "prepare", "images -> train set and the preprocessed uint8 validation "
                     "set", ("--out",)),
    "vae": Stage("coda.stages.vae", "write_vaes", "the frozen continuous VAE as a local diffusers directory "
                 "(trains one at tiny scale)", ("--prepared", "--out"), gpu=True),
    "cache": Stage("coda.stages.cache", "cache", "posterior moments of the frozen VAE for train and val images",
                   ("--prepared", "--vae", "--out"), gpu=True),
    "train": Stage("coda.stages.train", "train", "train one experiment (resumes from its checkpoint when rerun)",
                   ("--experiment", "--prepared", "--vae", "--cache", "--out"), gpu=True),
    "reference": Stage("coda.stages.reference", "reference", "Inception and VGG16 statistics of the validation "
                       "images, once for every evaluation", ("--prepared", "--out"), gpu=True),
    "evaluate": Stage("coda.stages.evaluate", "evaluate", "metrics of one experiment's tokenizer, or of the "
                      "continuous VAE (--experiment vae)",
                      ("--experiment", "--prepared", "--vae", "--reference", "--tokenizer", "--out"), gpu=True),
    "tokenize": Stage("coda.stages.tokenize", "tokenize", "one experiment's tokenizer over the prepared train and "
                      "val sets -> token shards", ("--experiment", "--prepared", "--tokenizer", "--out"), gpu=True),
    "report": Stage("coda.stages.report", "report", "table1.csv, ablation.csv, figures and README from all metrics "
                    "files", ("--reported", "--prepared", "--train", "--eval", "--out")),
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

# Run once by a maintainer, not by the DAG.
BUILD_COMMANDS = {
    "pretrain-vae": Stage("coda.stages.vae", "pretrain", "train the scale's pretrained VAE from "
                          "scales.<scale>.vae.recipe into its path or --out (the demo's models/demo-vae; make "
                          "demo-vae), on the CPU", ("--out",)),
}


# The generator's commands, not DAG stages yet (coda/generation/commands.py; sample needs no params.yaml).
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


# Commands on your own files: no params.yaml, and not pipeline stages.
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
    for name, stage in (STAGES | BUILD_COMMANDS).items():
        p = sub.add_parser(name, help=stage.help, description=stage.help)
        p.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
        p.add_argument("--scale", help="override params.yaml's `scale` (Snakemake passes --config scale=...)")
        _add_common_arguments(p)
        for flag in stage.flags:  # all required but evaluate's --tokenizer and a build command's --out
            p.add_argument(flag, required=name in STAGES and (name, flag) != ("evaluate", "--tokenizer"),
                           help=FLAG_HELP[flag])
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
    """Run one stage or file command. A problem the user can fix (coda/errors.py's UserError, a missing
    file) ends with one message and its exit status (2; 3 for a non-finite loss); a bug keeps its traceback."""
    args = build_parser().parse_args(argv)
    log_to(args.log)
    try:
        if args.command in FILE_COMMANDS:
            run_on_files(args)
            return 0
        if args.command == "sample":
            from .generation.commands import sample

            sample(args)
            return 0
        params = load_params(args.params, scale=args.scale)
        if args.command == "train-generator":
            from .generation.commands import train_generator

            train_generator(args, params)
            return 0
        stage = STAGES.get(args.command) or BUILD_COMMANDS[args.command]
        if args.command in STAGES:  # a build command makes its input, on its recipe's threads
            check_external_inputs(params)  # DVC's up-front refusal; Snakemake runs it in onstart too
            pin_cpu(scale_block(params))
        processes = train_processes(params, args.experiment) if args.command == "train" else 1
        if stage.gpu:  # before anything touches CUDA: this job's own cards, one per process
            claim_gpu(processes)
            experiment = getattr(args, "experiment", None)
            config = experiment_config(params, experiment if experiment in params["experiments"] else "base")
            check_gpu(params["scale"], scale_block(params).get("require_gpu", False),
                      config.get("train", {}).get("device", "auto"))
        if processes > 1 and not in_rank():  # each rank reruns this very command (coda/train/launch.py)
            return run_ranks(processes, list(sys.argv[1:] if argv is None else argv))
        run = getattr(importlib.import_module(stage.module), stage.function)
        run(params, **{flag[2:]: getattr(args, flag[2:]) for flag in stage.flags})
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
        if args.debug or not isinstance(error, (UserError, FileNotFoundError, NotADirectoryError)):
            raise
        print(f"coda {args.command}: error: {error}", file=sys.stderr)
        return getattr(error, "exit_status", 2)
    return 0

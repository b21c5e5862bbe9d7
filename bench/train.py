"""Benchmark: training-step throughput of the f16 paper configuration, fp32 vs each speed option.

Each option (bf16, channels_last, tf32, compile, or several joined by '+'; fp32 is none) runs the
real trainer for a few steps; images/s is the median after the warm-up steps (bench/README.md).
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SPEED_OPTIONS = ("bf16", "channels_last", "tf32", "compile")


def f16_experiment(codebook_size: int, resolution: int) -> dict:
    from coda.lora import LORA_TARGETS
    from coda.quantizers.multiscale import F16_SCALES

    latent = resolution // 16
    scales = [s for s in F16_SCALES if s < latent] + [latent]
    return {"quantizer": {"kind": "coda", "codebook_size": codebook_size, "dim": 16, "attn_dim": 32,
                          "scales": scales},
            "lora": {"rank": 32, "targets": list(LORA_TARGETS["f16"]), "where": "both"},
            "posterior": "sample", "variant": "f16"}


def prepare_inputs(work: Path, resolution: int, count: int) -> tuple[Path, Path]:
    from coda.compat import ldm
    from coda.vae import ContinuousVAE

    torch.manual_seed(0)
    vae = ContinuousVAE.from_config(ldm.diffusers_config(ldm.MAR_KL16))
    vae.autoencoder.save_pretrained(work / "vae")
    images = np.random.default_rng(0).integers(0, 256, (count, resolution, resolution, 3), dtype=np.uint8)
    np.save(work / "images.npy", images)
    return work / "vae", work / "images.npy"


def run_option(option: str, args, vae_dir: Path, images: Path, work: Path) -> dict:
    """One short training run with this option; per-step images/s after the warm-up steps."""
    from coda.train.stage import train

    flags = [] if option == "fp32" else option.split("+")
    unknown = [f for f in flags if f not in SPEED_OPTIONS]
    if unknown:
        raise SystemExit(f"unknown speed option {unknown}; choose from fp32 or {SPEED_OPTIONS} joined by '+'")
    experiment = f16_experiment(args.codebook_size, args.resolution)
    experiment["train"] = {"batch_size": args.batch, "grad_accum": 1, "max_steps": args.steps,
                           "checkpoint_every": 10 ** 9, "progress_interval": 60, "device": args.device,
                           **{f: True for f in flags}}
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    out = Path(tempfile.mkdtemp(dir=work, prefix=option + "-"))
    train(experiment, vae_dir, out, images=images)
    with open(out / "train_log.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    warmup = args.warmup + (2 if "compile" in flags else 0)
    timed = [float(r["images_per_s"]) for r in rows[warmup:]] or [float(rows[-1]["images_per_s"])]
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if args.device == "cuda" else float("nan")
    return {"option": option, "rates": timed, "peak_gib": peak, "loss": float(rows[-1]["loss"])}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--options", default="fp32,bf16,channels_last",
                        help="comma-separated; fp32 first (the ratios are relative to it)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="steps left out of the timing")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds over all options (round-robin, so load changes hit every option alike)")
    parser.add_argument("--resolution", type=int, default=256, help="256 is the paper's; 128 for a quick look")
    parser.add_argument("--codebook-size", type=int, default=16384)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no GPU")
    options = args.options.split(",")
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"f16 training step, {args.resolution}^2, batch {args.batch}, {args.steps} steps "
          f"({args.warmup} warm-up), V={args.codebook_size}, {device_name}",
          flush=True)
    runs: dict[str, list[dict]] = {option: [] for option in options}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        vae_dir, images = prepare_inputs(work, args.resolution, count=2 * args.batch)
        for _ in range(args.repeats):
            for option in options:
                try:
                    runs[option].append(run_option(option, args, vae_dir, images, work))
                except Exception as error:  # one failing option (e.g. compile) must not hide the others
                    print(f"{option}: failed: {type(error).__name__}: {error}", flush=True)
    nan = float("nan")
    results = {option: {"images_per_s": statistics.median([x for r in done for x in r["rates"]]) if done else nan,
                        "peak_gib": max((r["peak_gib"] for r in done), default=nan),
                        "loss": done[0]["loss"] if done else nan,
                        "steps": sum(len(r["rates"]) for r in done)}
               for option, done in runs.items()}
    base = results.get("fp32", {}).get("images_per_s", nan)
    print(f"\n{'option':<22}{'images/s':>10}{'vs fp32':>9}{'peak GiB':>10}{'loss':>9}{'steps':>7}")
    for option, r in results.items():
        print(f"{option:<22}{r['images_per_s']:>10.3f}{r['images_per_s'] / base:>8.2f}x"
              f"{r['peak_gib']:>10.2f}{r['loss']:>9.4f}{r['steps']:>7}")

if __name__ == "__main__":
    main()

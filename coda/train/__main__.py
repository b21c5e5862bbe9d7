"""python -m coda.train --experiment-dir OUT --config EXPERIMENT.json --vae VAE_DIR (--images X | --latents CACHE)

Rerunning the same command resumes from OUT/checkpoints/. Under ``torchrun --nproc_per_node N``
the same command trains data-parallel.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .loop import NonFiniteLossError, train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coda.train", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment-dir", required=True, type=Path, help="output directory (resumes if it has a checkpoint)")
    parser.add_argument("--config", required=True, type=Path, help="experiment config JSON: quantizer, lora, posterior, train")
    parser.add_argument("--vae", required=True, help="local diffusers AutoencoderKL directory")
    parser.add_argument("--images", help="training images: uint8 N x H x W x 3 .npy or a prepared data directory")
    parser.add_argument("--latents", help="latent cache directory (data_mode latents)")
    args = parser.parse_args(argv)
    experiment = json.loads(args.config.read_text())
    try:
        train(experiment, args.vae, args.experiment_dir, images=args.images, latents=args.latents)
    except NonFiniteLossError as error:
        print(f"coda.train: {error}", file=sys.stderr)
        return 3
    except (FileNotFoundError, ValueError) as error:
        print(f"coda.train: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

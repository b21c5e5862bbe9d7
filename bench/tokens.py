"""Tokenize-stage throughput vs the bare encode + quantize loop, measured in one run.

The tokenize stage (coda/token_files.py: loading in a DataLoader worker, encode + quantize, uint16 shards
written by a background thread) should reach at least 90 % of ``Tokenizer.encode`` alone on batches
already in memory: loading and writing must hide behind the model.

    python bench/tokens.py [--images 1024] [--batch 64]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from coda.config import experiment_config, load_params, scale_block
from coda.data.datasets import ArrayImages
from coda.lora import add_lora
from coda.pixels import from_uint8
from coda.quantizers import build_quantizer
from coda.tokenizer import Tokenizer
from coda.token_files import tokenize_splits
from coda.vae import ContinuousVAE


def demo_tokenizer() -> Tokenizer:
    """The demo scale's shapes, read from params.yaml (its VAE's architecture, coda's quantizer and
    LoRA); random weights (speed does not depend on them)."""
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml", scale="demo")
    experiment = experiment_config(params, "coda")
    vae = ContinuousVAE.small(seed=0, **scale_block(params)["vae"]["recipe"]["architecture"]).freeze()
    add_lora(vae, **experiment["lora"])
    quantizer = build_quantizer(**experiment["quantizer"], dim=vae.latent_channels)
    return Tokenizer(vae, quantizer, experiment["lora"], posterior="sample").eval()


@torch.no_grad()
def bare_encode(tokenizer, images: torch.Tensor, batch: int) -> float:
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        tokenizer.encode(images[i:i + batch], generator)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = demo_tokenizer()
    resolution = tokenizer.resolution
    pixels = np.random.default_rng(0).integers(0, 256, (args.images, resolution, resolution, 3), dtype=np.uint8)
    in_memory = from_uint8(torch.from_numpy(pixels).permute(0, 3, 1, 2)).contiguous()
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "images.npy"
        np.save(npy, pixels)
        dataset = ArrayImages(npy)
        bare_encode(tokenizer, in_memory[: args.batch], args.batch)  # warm-up
        bare, staged = [], []
        for r in range(args.repeats):  # interleaved, so drift in machine load hits both alike
            bare.append(bare_encode(tokenizer, in_memory, args.batch))
            start = time.perf_counter()
            tokenize_splits(tokenizer, {"train": dataset}, Path(tmp) / f"tokens{r}", tokenizer_sha256="bench",
                            preprocessing={}, batch_size=args.batch, shard_size=args.shard_size,
                            num_workers=args.workers)
            staged.append(args.images / (time.perf_counter() - start))
    bare_rate, stage_rate = max(bare), max(staged)
    print(f"images: {args.images} at {resolution}x{resolution}, batch {args.batch}, {args.threads} threads, "
          f"{args.workers} loader worker(s)")
    print(f"bare encode + quantize : {bare_rate:8.1f} img/s")
    print(f"tokenize stage         : {stage_rate:8.1f} img/s (load + encode + quantize + uint16 shards)")
    print(f"ratio tokenize / bare  : {stage_rate / bare_rate:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()

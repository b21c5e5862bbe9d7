"""Latent caching throughput vs the bare encoder, measured in one run.

The cache stage loads images (DataLoader workers), encodes them and writes fp16 shards (a
background thread). Its throughput should be at least 90 % of the encoder's forward alone on
tensors already in memory: loading and writing must hide behind encoding.

    python bench/cache.py [--images 1024] [--resolution 64] [--batch 64]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from coda.cache import cache_latents
from coda.data.datasets import ArrayImages
from coda.pixels import from_uint8
from coda.vae import ContinuousVAE


@torch.no_grad()
def bare_encoder(vae, images: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        vae.encode(images[i:i + batch])
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vae = ContinuousVAE.small(seed=0, block_out_channels=[32, 64, 128, 128], layers_per_block=1).freeze()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (args.images, args.resolution, args.resolution, 3), dtype=np.uint8)
    # The encoder's best case: batches already in memory, in the layout it runs fastest on.
    in_memory = from_uint8(torch.from_numpy(pixels).permute(0, 3, 1, 2)).contiguous(
        memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "images.npy"
        np.save(npy, pixels)
        dataset = ArrayImages(npy)
        bare_encoder(vae, in_memory[: args.batch], args.batch)  # warm-up
        bare, cached = [], []
        for r in range(args.repeats):  # interleaved, so drift in machine load hits both alike
            bare.append(bare_encoder(vae, in_memory, args.batch))
            start = time.perf_counter()
            cache_latents(vae, {"train": dataset}, Path(tmp) / f"cache{r}", vae_hash="bench",
                          preprocessing={}, shard_size=args.shard_size, batch_size=args.batch,
                          num_workers=args.workers)
            cached.append(args.images / (time.perf_counter() - start))
    bare_rate, cache_rate = max(bare), max(cached)
    print(f"images: {args.images} at {args.resolution}x{args.resolution}, batch {args.batch}, "
          f"{args.threads} threads, {args.workers} loader worker(s)")
    print(f"bare encoder forward : {bare_rate:8.1f} img/s")
    print(f"cache stage          : {cache_rate:8.1f} img/s (load + encode + fp16 shards)")
    print(f"ratio cache / bare   : {cache_rate / bare_rate:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()

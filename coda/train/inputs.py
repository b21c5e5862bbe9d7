"""What a run trains and on what: the tokenizer to train, the dataset, and this rank's micro-batches.

All randomness of a step is a function of (seed, step, micro-batch): the data order of an epoch
comes from (seed, epoch) and the posterior noise from (seed, step, micro-batch). That makes a
resumed run, or a run split over ranks, see exactly what an uninterrupted single process sees.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset


def build_tokenizer(experiment: dict, vae_dir, data_mode: str):
    from ..lora import add_lora
    from ..quantizers import build_quantizer
    from ..tokenizer import Tokenizer
    from ..vae import ContinuousVAE

    lora = experiment.get("lora")
    if lora and data_mode == "latents":
        raise ValueError("latents mode trains the quantizer on cached latents of the frozen VAE, so "
                         "LoRA would never be used: set lora: null, or train.data_mode: images")
    vae = ContinuousVAE.from_pretrained(vae_dir).freeze()
    if lora:
        add_lora(vae, **lora)  # only the LoRA branches train
    # The code dimension is the VAE's latent channel count unless the experiment says otherwise.
    quantizer = build_quantizer(**{"dim": vae.latent_channels, **experiment["quantizer"]})
    return Tokenizer(vae, quantizer, lora or None, experiment.get("posterior", "sample"))


def open_dataset(data_mode: str, images, latents, seed: int) -> Dataset:
    """images: a Dataset, a uint8 .npy or a prepared data directory; latents: a Dataset of
    (mean, logvar) pairs or a cache directory."""
    if data_mode == "latents":
        from ..cache import LatentDataset

        if latents is None:
            raise ValueError("data_mode latents needs the latent cache directory (--latents)")
        return latents if isinstance(latents, Dataset) else LatentDataset(latents, "train")
    if images is None:
        raise ValueError("data_mode images needs training images (--images: .npy or prepared dir)")
    if isinstance(images, Dataset):
        return images
    from ..data.datasets import ArrayImages, train_dataset

    path = Path(images)
    return ArrayImages(path) if path.suffix == ".npy" else train_dataset(path, seed=seed)


def mix_seeds(*numbers: int) -> int:
    """A seed from several integers (distinct tuples give distinct seeds in practice)."""
    seed = 0
    for n in numbers:
        seed = (seed * 1_000_003 + int(n) + 1) % (2 ** 63 - 1)
    return seed


def micro_batch_stream(dataset, cfg, info, start_step: int, steps_per_epoch: int, memory_format):
    """This rank's micro-batches from ``start_step`` on, epoch after epoch, on its device.

    Step s of epoch e takes global batch s of a permutation seeded by (seed, e); micro-batch
    m = k * world + rank of it goes to accumulation round k on this rank.
    """
    world, micro = info.world_size, cfg.batch_size
    global_batch = micro * cfg.grad_accum * world
    step = start_step
    while True:
        epoch, first = divmod(step, steps_per_epoch)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(mix_seeds(cfg.seed, epoch)))
        batches = []
        for s in range(first, steps_per_epoch):
            chunk = order[s * global_batch:(s + 1) * global_batch]
            for k in range(cfg.grad_accum):
                m = k * world + info.rank
                batches.append(chunk[m * micro:(m + 1) * micro].tolist())
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        for batch in DataLoader(dataset, batch_sampler=batches, num_workers=cfg.num_workers,
                                pin_memory=info.device.type == "cuda"):
            if isinstance(batch, torch.Tensor):  # images
                yield batch.to(info.device, non_blocking=True).contiguous(memory_format=memory_format)
            else:  # (mean, logvar) latents
                yield [b.to(info.device) for b in batch]
        step = (epoch + 1) * steps_per_epoch

"""Cache the frozen VAE's posterior moments, so latent-space experiments never run the encoder.

Layout (see docs/interfaces.md): ``<dir>/<split>-00000.safetensors`` shards holding ``mean`` and
``logvar`` (raw latent space, fp16 by default) and ``<dir>/manifest.json``, written last. Resumable
by shard (``coda.shards``): the shards are only reused when ``cache_state.json`` says they came from
the same VAE and preprocessing.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from .artifacts import MANIFEST
from .files import write_json
from .shards import prepare_shard_directory, read_manifest, read_split, tensor_shape, write_shards

STATE = "cache_state.json"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
REMEDY = "delete the cache directory and rerun the cache stage"


@torch.no_grad()
def cache_latents(vae, splits: dict[str, Dataset], out_dir: str | Path, *, vae_hash: str,
                  preprocessing: dict, shard_size: int = 1024, batch_size: int = 32,
                  dtype: str = "float16", num_workers: int = 1, device: str = "cpu") -> Path:
    """Encode every image of every split and write posterior moments in shards. The settings are
    checked by the params schema."""
    out_dir = Path(out_dir)
    counts = {name: len(ds) for name, ds in splits.items()}
    identity = {"vae_hash": vae_hash, "preprocessing": preprocessing, "dtype": dtype,
                "shard_size": shard_size, "counts": counts}
    prepare_shard_directory(out_dir, identity, STATE, "cache")
    vae = vae.to(device).eval()
    store = DTYPES[dtype]

    def encode(images, _):
        # channels_last: oneDNN/cuDNN convolutions run NHWC faster (same math).
        posterior = vae.encode(images.to(device, non_blocking=True, memory_format=torch.channels_last))
        return {"mean": posterior.mean.to("cpu", store), "logvar": posterior.logvar.to("cpu", store)}

    listing = write_shards(splits, out_dir, lambda split: (encode, None), shard_size=shard_size,
                           batch_size=batch_size, num_workers=num_workers, device=device, what="cache")
    manifest = {**identity, "latent_shape": tensor_shape(out_dir, listing, "mean"), "splits": listing}
    write_json(out_dir / MANIFEST, manifest)
    return out_dir / MANIFEST


class LatentDataset(Dataset):
    """Cached posterior moments of one split, as float32 ``(mean, logvar)`` pairs.

    Shards are read fully into memory: latents are 48x smaller than the images they come from
    (f16: 16 x 16 x 16 fp16 per 256x256 image, 8 KiB).
    """

    def __init__(self, cache_dir: str | Path, split: str):
        manifest = read_manifest(cache_dir, "latent cache", "run the cache stage first (`coda cache`), or train "
                                 "in `images` mode", REMEDY)
        parts = read_split(cache_dir, manifest, split, ["mean", "logvar"], "latent cache", REMEDY)
        self.mean, self.logvar = torch.cat(parts["mean"]), torch.cat(parts["logvar"])
        self.latent_shape = list(self.mean.shape[1:])

    def __len__(self) -> int:
        return len(self.mean)

    def __getitem__(self, index: int):
        return self.mean[index].float(), self.logvar[index].float()

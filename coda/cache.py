"""Cache the frozen VAE's posterior moments, so latent-space experiments never run the encoder.

Layout (see docs/interfaces.md): ``<dir>/<split>-00000.safetensors`` shards holding ``mean`` and
``logvar`` (raw latent space, fp16 by default) and ``<dir>/manifest.json``, written last. A run that
is interrupted keeps its finished shards (each written atomically) and continues from there; the
shards are only reused when ``cache_state.json`` says they came from the same VAE and preprocessing.
"""
from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .artifacts import MANIFEST
from .files import atomic_path, reading, write_json

STATE = "cache_state.json"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.safetensors"


def save_shard(tensors: dict, path: Path) -> None:
    """One shard (torch tensors or numpy arrays), atomically: a killed run leaves none half-written."""
    tensors = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp)


def prepare_shard_directory(out_dir: Path, identity: dict, state_name: str = STATE, what: str = "cache") -> None:
    """Keep the finished shards of the same run; drop shards that another run (``identity``: model,
    data, settings) made. ``identity`` is kept in ``state_name``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / state_name
    if state_path.exists() and json.loads(state_path.read_text()) != identity:
        stale = list(out_dir.glob("*.safetensors"))
        print(f"{what}: {out_dir} holds {len(stale)} shards of another model, data or settings; "
              "recomputing them")
        for path in stale:
            path.unlink()
        (out_dir / MANIFEST).unlink(missing_ok=True)
    write_json(state_path, identity)


@torch.no_grad()
def cache_latents(vae, splits: dict[str, Dataset], out_dir: str | Path, *, vae_hash: str,
                  preprocessing: dict, shard_size: int = 1024, batch_size: int = 32,
                  dtype: str = "float16", num_workers: int = 1, device: str = "cpu") -> Path:
    """Encode every image of every split and write posterior moments in shards.

    Loading runs in DataLoader workers and shard writing in a background thread, so the encoder
    is the only thing the main thread waits for. The settings are checked by the params schema.
    """
    out_dir = Path(out_dir)
    counts = {name: len(ds) for name, ds in splits.items()}
    identity = {"vae_hash": vae_hash, "preprocessing": preprocessing, "dtype": dtype,
                "shard_size": shard_size, "counts": counts}
    prepare_shard_directory(out_dir, identity)
    vae = vae.to(device).eval()
    store = DTYPES[dtype]
    latent_shape = None
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = []
        for split, dataset in splits.items():
            n_shards = math.ceil(len(dataset) / shard_size)
            todo = [i for i in range(n_shards) if not (out_dir / shard_name(split, i)).exists()]
            if len(todo) < n_shards:
                print(f"cache: {split}: {n_shards - len(todo)} of {n_shards} shards already done, resuming")
            # One loader per split; its batches never cross a shard boundary.
            batches = [list(range(start, min(start + batch_size, end)))
                       for i in todo
                       for end in [min((i + 1) * shard_size, len(dataset))]
                       for start in range(i * shard_size, end, batch_size)]
            loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                pin_memory=device != "cpu")
            bar = tqdm(total=sum(len(b) for b in batches), desc=f"cache {split}", unit="img", mininterval=5)
            shards = iter(todo)
            shard, means, logvars, filled = next(shards, None), [], [], 0
            for images in loader:
                # channels_last: oneDNN/cuDNN convolutions run NHWC faster (same math).
                posterior = vae.encode(images.to(device, non_blocking=True, memory_format=torch.channels_last))
                means.append(posterior.mean.to("cpu", store))
                logvars.append(posterior.logvar.to("cpu", store))
                filled += len(images)
                bar.update(len(images))
                if filled == min(shard_size, len(dataset) - shard * shard_size):
                    tensors = {"mean": torch.cat(means).contiguous(), "logvar": torch.cat(logvars).contiguous()}
                    latent_shape = list(tensors["mean"].shape[1:])
                    pending.append(writer.submit(save_shard, tensors, out_dir / shard_name(split, shard)))
                    shard, means, logvars, filled = next(shards, None), [], [], 0
            bar.close()
        for job in pending:
            job.result()  # surface write errors
    if latent_shape is None:  # everything was already cached: read it from a shard's header
        with safe_open(out_dir / shard_name(next(iter(splits)), 0), framework="pt") as f:
            latent_shape = f.get_slice("mean").get_shape()[1:]
    manifest = {**identity, "latent_shape": latent_shape,
                "splits": {name: {"count": counts[name],
                                  "shards": [shard_name(name, i) for i in range(math.ceil(counts[name] / shard_size))]}
                           for name in splits}}
    write_json(out_dir / MANIFEST, manifest)
    return out_dir / MANIFEST


class LatentDataset(Dataset):
    """Cached posterior moments of one split, as float32 ``(mean, logvar)`` pairs.

    Shards are read fully into memory: latents are 48x smaller than the images they come from
    (f16: 16 x 16 x 16 fp16 per 256x256 image, 8 KiB).
    """

    def __init__(self, cache_dir: str | Path, split: str):
        manifest_path = Path(cache_dir) / MANIFEST
        if not manifest_path.exists():
            raise FileNotFoundError(f"{manifest_path} not found: run the cache stage first "
                                    "(`coda cache`), or train in `images` mode")
        remedy = "delete the cache directory and rerun the cache stage"
        with reading(manifest_path, "latent cache manifest", remedy):
            manifest = json.loads(manifest_path.read_text())
        if split not in manifest["splits"]:
            raise KeyError(f"split {split!r} not in {manifest_path} (has {sorted(manifest['splits'])})")
        means, logvars = [], []
        for name in manifest["splits"][split]["shards"]:
            with reading(Path(cache_dir) / name, "latent cache shard", remedy):
                with safe_open(Path(cache_dir) / name, framework="pt") as f:
                    means.append(f.get_tensor("mean"))
                    logvars.append(f.get_tensor("logvar"))
        self.mean, self.logvar = torch.cat(means), torch.cat(logvars)
        self.latent_shape = list(self.mean.shape[1:])

    def __len__(self) -> int:
        return len(self.mean)

    def __getitem__(self, index: int):
        return self.mean[index].float(), self.logvar[index].float()


"""Sharded outputs of a resumable stage (the latent cache, the token files): the one loop that encodes
a dataset shard by shard, and the reading back.

Layout (docs/interfaces.md): ``<dir>/<split>-00000.safetensors`` shards, each written atomically, and
``<dir>/manifest.json``, written last. A run that is interrupted keeps its finished shards and
continues from there; they are only reused when the stage's state file (``prepare_shard_directory``)
says they came from the same model, data and settings.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
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


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.safetensors"


def save_shard(tensors: dict, path: Path) -> None:
    """One shard (torch tensors or numpy arrays), atomically: a killed run leaves none half-written."""
    tensors = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp)


def prepare_shard_directory(out_dir: Path, identity: dict, state_name: str, what: str) -> None:
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


def split_listing(counts: dict[str, int], shard_size: int) -> dict[str, dict]:
    """The manifest's ``splits``: each split's image count and shard files, in order."""
    return {name: {"count": count, "shards": [shard_name(name, i) for i in range(math.ceil(count / shard_size))]}
            for name, count in counts.items()}


def _concatenate(parts: list):
    """One shard's tensor from its batches' (numpy arrays or torch tensors, as the encoder gave them)."""
    if isinstance(parts[0], np.ndarray):
        return np.ascontiguousarray(np.concatenate(parts))
    return torch.cat(parts).contiguous()


# (a DataLoader batch, the dataset indices of its items) -> {tensor name: CPU tensor or array, one row per item}
Encode = Callable[[object, list[int]], dict]
Skip = Callable[[int], None]        # called with the size of each batch of a finished shard, in order


@torch.no_grad()
def write_shards(splits: dict[str, Dataset], out_dir: Path, encoder: Callable[[str], tuple[Encode, Skip | None]], *,
                 shard_size: int, batch_size: int, num_workers: int, device: str, what: str) -> dict[str, dict]:
    """Encode every item of every split into shards of ``shard_size`` items; returns the manifest's
    ``splits`` (``split_listing``). ``encoder(split)`` gives that split's ``encode`` (given a batch and
    its items' indices; each shard holds the names it returns, so a new tensor per item, such as a
    class label, is one more name) and ``skip`` (or None): a stage
    whose batches consume a random stream replays them there for the shards already done, so the
    shards it computes get the draws of an uninterrupted run.

    Batches never cross a shard boundary. Loading runs in DataLoader workers (one loader per split)
    and shard writing in a background thread, so the encoder is the only thing the main thread waits for.
    """
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = []
        for split, dataset in splits.items():
            encode, skip = encoder(split)
            shards = [[list(range(start, min(start + batch_size, end))) for start in range(first, end, batch_size)]
                      for first in range(0, len(dataset), shard_size)
                      for end in [min(first + shard_size, len(dataset))]]
            done = {i for i in range(len(shards)) if (out_dir / shard_name(split, i)).exists()}
            if done:
                print(f"{what}: {split}: {len(done)} of {len(shards)} shards already done, resuming")
            loader = iter(DataLoader(dataset, batch_sampler=[b for i, s in enumerate(shards) if i not in done for b in s],
                                     num_workers=num_workers, pin_memory=device != "cpu"))
            bar = tqdm(total=len(dataset), initial=sum(len(b) for i in done for b in shards[i]),
                       desc=f"{what} {split}", unit="img", mininterval=5)
            for index, batches in enumerate(shards):
                if index in done:
                    for batch in batches if skip is not None else []:
                        skip(len(batch))
                    continue
                parts: dict[str, list] = {}
                for batch in batches:
                    for key, value in encode(next(loader), batch).items():
                        parts.setdefault(key, []).append(value)
                    bar.update(len(batch))
                tensors = {key: _concatenate(values) for key, values in parts.items()}
                pending.append(writer.submit(save_shard, tensors, out_dir / shard_name(split, index)))
            bar.close()
        for job in pending:
            job.result()  # surface write errors
    return split_listing({split: len(dataset) for split, dataset in splits.items()}, shard_size)


def read_manifest(directory: str | Path, what: str, missing: str, remedy: str) -> dict:
    """``<directory>/manifest.json``; ``missing`` says what to run when there is none."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {missing}")
    with reading(path, f"{what} manifest", remedy):
        return json.loads(path.read_text())


def read_split(directory: str | Path, manifest: dict, split: str, keys: list[str], what: str, remedy: str,
               framework: str = "pt") -> dict[str, list]:
    """{key: that tensor of every shard of ``split``, in order} (torch tensors, or numpy arrays with
    ``framework="numpy"``); a split the manifest does not list is a KeyError naming those it does."""
    if split not in manifest["splits"]:
        raise KeyError(f"split {split!r} not in {Path(directory) / MANIFEST} (has {sorted(manifest['splits'])})")
    parts: dict[str, list] = {key: [] for key in keys}
    for name in manifest["splits"][split]["shards"]:
        path = Path(directory) / name
        with reading(path, f"{what} shard", remedy), safe_open(path, framework=framework) as f:
            for key in keys:
                parts[key].append(f.get_tensor(key))
    return parts


def tensor_shape(directory: str | Path, manifest_splits: dict, key: str) -> list[int]:
    """The per-item shape of ``key``, read from the first shard's header."""
    first = next(listing["shards"][0] for listing in manifest_splits.values() if listing["shards"])
    with safe_open(Path(directory) / first, framework="pt") as f:
        return list(f.get_slice(key).get_shape()[1:])

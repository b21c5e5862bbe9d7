"""A prepared dataset to token files for a generator (the ``tokenize`` stage), and ``TokenDataset``.

Layout (docs/interfaces.md): ``<dir>/<split>-00000.safetensors`` shards holding one index tensor
``scale_<i>`` (N x s x s) per scale, uint16 (uint32 above 65536 codes), and with ``flip`` the
horizontally flipped images' indices as ``flipped_scale_<i>``, and with class labels each item's
class as ``labels`` (int64 N, -1: none of the classes); ``<dir>/manifest.json``, written last, says
what made them and names the classes in label order (``classes``). Resumable like the latent cache (``coda.cache``): finished shards are
kept when ``tokens_state.json`` names the same tokenizer, data and settings.

Posterior noise: each split draws it from one generator seeded with ``seed``, batch after batch of
``batch_size`` images in order: the evaluate stage's stream, so with evaluate's batch size and seed
the val tokens are the very indices it reconstructs from (decoding them gives its reconstructions
bit for bit). A resumed run replays the draws of the shards it skips (noise only, no encoding).
The flipped copies draw from a second generator, so switching ``flip`` on changes no other token.
"""
from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .artifacts import MANIFEST
from .cache import prepare_shard_directory, save_shard, shard_name
from .files import reading, write_json

STATE = "tokens_state.json"
FORMAT = "coda-token-shards/1"
REMEDY = "delete the token directory and rerun the tokenize stage (`coda tokenize`)"


def index_dtype(codebook_size: int) -> np.dtype:
    """The narrowest unsigned integer holding every index of a ``codebook_size`` codebook."""
    return np.dtype(np.uint16 if codebook_size <= 1 << 16 else np.uint32)


def _keys(num_scales: int, flipped: bool = False) -> list[str]:
    return [f"{'flipped_' if flipped else ''}scale_{i}" for i in range(num_scales)]


def _generators(seed: int, device: str) -> tuple[torch.Generator, torch.Generator]:
    """(the images' stream, the flipped copies' stream)."""
    return (torch.Generator(device).manual_seed(int(seed)),
            torch.Generator(device).manual_seed(int(seed) + 1))


def _shard_batches(start: int, end: int, batch_size: int) -> list[list[int]]:
    return [list(range(b, min(b + batch_size, end))) for b in range(start, end, batch_size)]


@torch.no_grad()
def tokenize_splits(tokenizer, splits: dict[str, Dataset], out_dir: str | Path, *, tokenizer_sha256: str,
                    preprocessing: dict, seed: int = 0, batch_size: int = 64, shard_size: int = 4096,
                    flip: bool = False, num_workers: int = 1, device: str = "cpu",
                    classes: list[str] | None = None, labels: dict[str, np.ndarray] | None = None) -> Path:
    """Encode every image of every split (images in [-1, 1], as the datasets give them) and write
    the indices in shards; returns the manifest's path. ``labels``: each split's class labels in
    item order (indices into ``classes``), written beside the indices. ``shard_size`` must be a multiple of
    ``batch_size``, so that batches (and the noise drawn for them) never depend on the sharding."""
    if shard_size < 1 or batch_size < 1 or shard_size % batch_size:
        raise ValueError(f"tokenize: shard_size ({shard_size}) must be a positive multiple of the batch size "
                         f"({batch_size}), so that each batch draws the same noise however the run is sharded")
    out_dir = Path(out_dir)
    quantizer = tokenizer.quantizer
    scales, dtype = list(quantizer.scales), index_dtype(quantizer.codebook_size)
    counts = {name: len(ds) for name, ds in splits.items()}
    identity = {"format": FORMAT, "tokenizer_sha256": tokenizer_sha256, "preprocessing": preprocessing,
                "posterior": tokenizer.posterior, "seed": int(seed), "batch_size": int(batch_size),
                "shard_size": int(shard_size), "flip": bool(flip), "counts": counts,
                "classes": list(classes) if labels is not None else None}
    for name in splits if labels is not None else ():
        if len(labels[name]) != counts[name]:
            raise ValueError(f"tokenize: {len(labels[name])} labels for the {counts[name]} {name} images")
    prepare_shard_directory(out_dir, identity, STATE, "tokens")
    tokenizer = tokenizer.to(device).eval()
    latent_shape = (tokenizer.vae.latent_channels, quantizer.latent_size, quantizer.latent_size)

    def encode(images, generator):
        return [level.to("cpu").numpy().astype(dtype) for level in tokenizer.encode(images, generator)]

    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = []
        for split, dataset in splits.items():
            n_shards = math.ceil(len(dataset) / shard_size)
            done = {i for i in range(n_shards) if (out_dir / shard_name(split, i)).exists()}
            if done:
                print(f"tokens: {split}: {len(done)} of {n_shards} shards already done, resuming")
            streams = _generators(seed, device)
            bar = tqdm(total=len(dataset), initial=sum(min(shard_size, len(dataset) - i * shard_size) for i in done),
                       desc=f"tokenize {split}", unit="img", mininterval=5)
            for shard in range(n_shards):
                batches = _shard_batches(shard * shard_size, min((shard + 1) * shard_size, len(dataset)), batch_size)
                if shard in done:  # replay this shard's draws, so the next shard's noise is the same
                    if tokenizer.posterior == "sample":
                        for batch in batches:
                            for generator in streams[:1 + flip]:
                                torch.randn((len(batch), *latent_shape), generator=generator, device=device)
                    continue
                loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                    pin_memory=device != "cpu")
                levels = {key: [] for key in _keys(len(scales)) + (_keys(len(scales), True) if flip else [])}
                for images in loader:
                    images = images.to(device, non_blocking=True)
                    for key, level in zip(_keys(len(scales)), encode(images, streams[0])):
                        levels[key].append(level)
                    if flip:
                        for key, level in zip(_keys(len(scales), True), encode(images.flip(-1), streams[1])):
                            levels[key].append(level)
                    bar.update(len(images))
                tensors = {key: np.ascontiguousarray(np.concatenate(parts)) for key, parts in levels.items()}
                if labels is not None:
                    tensors["labels"] = np.ascontiguousarray(labels[split][batches[0][0]:batches[-1][-1] + 1],
                                                             dtype=np.int64)
                pending.append(writer.submit(save_shard, tensors, out_dir / shard_name(split, shard)))
            bar.close()
        for job in pending:
            job.result()  # surface write errors
    manifest = {**identity, "scales": scales, "codebook_size": quantizer.codebook_size, "dtype": dtype.name,
                "resolution": tokenizer.resolution, "indices_per_image": tokenizer.indices_per_image,
                "splits": {name: {"count": counts[name],
                                  "shards": [shard_name(name, i) for i in range(math.ceil(counts[name] / shard_size))]}
                           for name in splits}}
    write_json(out_dir / MANIFEST, manifest)
    return out_dir / MANIFEST


def read_manifest(token_dir: str | Path) -> dict:
    path = Path(token_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {token_dir} holds no finished token files; run the "
                                f"tokenize stage (`coda tokenize`)")
    with reading(path, "token manifest", REMEDY):
        manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} manifest; {REMEDY}")
    return manifest


class TokenDataset(Dataset):
    """The token files of one split: item ``i`` is (one LongTensor s x s per scale, its class label);
    the label is -1 for an item of none of the classes, and for token files written without labels.

    ``flipped=True`` (for a directory tokenized with ``flip``) appends the flipped copies: items
    ``count .. 2 count - 1`` are the flipped images, in the same order. Shards are read fully into
    memory: 680 uint16 indices per image (f16) are 1.4 KB, 1.8 GB for all of ImageNet's train set.
    """

    def __init__(self, token_dir: str | Path, split: str, flipped: bool = False):
        self.manifest = read_manifest(token_dir)
        if split not in self.manifest["splits"]:
            raise KeyError(f"split {split!r} not in {Path(token_dir) / MANIFEST} "
                           f"(has {sorted(self.manifest['splits'])})")
        if flipped and not self.manifest["flip"]:
            raise ValueError(f"{token_dir} was tokenized without flipped copies (tokenize.flip: false)")
        self.scales = list(self.manifest["scales"])
        keys = _keys(len(self.scales)) + (_keys(len(self.scales), True) if flipped else [])
        parts: dict[str, list[np.ndarray]] = {key: [] for key in keys}
        for name in self.manifest["splits"][split]["shards"]:
            path = Path(token_dir) / name
            with reading(path, "token shard", REMEDY), safe_open(path, framework="numpy") as f:
                for key in keys:
                    parts[key].append(f.get_tensor(key))
        levels = [np.concatenate(parts[key]) for key in _keys(len(self.scales))]
        if flipped:
            levels = [np.concatenate([level, np.concatenate(parts[key])])
                      for level, key in zip(levels, _keys(len(self.scales), True))]
        self.levels = levels  # kept narrow; each item is widened to int64 as it is read
        self.classes = self.manifest.get("classes")
        labels = np.full(len(levels[0]) // (1 + flipped), -1, dtype=np.int64)
        if self.classes is not None:
            parts = []
            for name in self.manifest["splits"][split]["shards"]:
                with safe_open(Path(token_dir) / name, framework="numpy") as f:
                    parts.append(f.get_tensor("labels"))
            labels = np.concatenate(parts)
        self.labels = np.concatenate([labels, labels]) if flipped else labels  # a flipped copy keeps its class

    def __len__(self) -> int:
        return len(self.levels[0])

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], int]:
        return [torch.from_numpy(level[index].astype(np.int64)) for level in self.levels], int(self.labels[index])

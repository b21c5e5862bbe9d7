"""A prepared dataset to token files for a generator (the ``tokenize`` stage), and ``TokenDataset``.

Layout (docs/interfaces.md): ``<dir>/<split>-00000.safetensors`` shards holding one index tensor
``scale_<i>`` (N x s x s) per scale, uint16 (uint32 above 65536 codes), and with ``flip`` the
horizontally flipped images' indices as ``flipped_scale_<i>``, and with class labels each item's
class as ``labels`` (int64 N, -1: none of the classes); ``<dir>/manifest.json``, written last, says
what made them and names the classes in label order (``classes``). Resumable by shard like the
latent cache (``coda.shards``): finished shards are kept when ``tokens_state.json`` names the same
tokenizer, data and settings.

Posterior noise: each split draws it from one generator seeded with ``seed``, batch after batch of
``batch_size`` images in order: the evaluate stage's stream, so with evaluate's batch size and seed
the val tokens are the very indices it reconstructs from (decoding them gives its reconstructions
bit for bit). A resumed run replays the draws of the shards it skips (noise only, no encoding).
The flipped copies draw from a second generator, so switching ``flip`` on changes no other token.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .artifacts import MANIFEST
from .files import write_json
from .shards import prepare_shard_directory, read_manifest, read_split, write_shards

STATE = "tokens_state.json"
FORMAT = "coda-token-shards/1"
REMEDY = "delete the token directory and rerun the tokenize stage (`coda tokenize`)"


def index_dtype(codebook_size: int) -> np.dtype:
    """The narrowest unsigned integer holding every index of a ``codebook_size`` codebook."""
    return np.dtype(np.uint16 if codebook_size <= 1 << 16 else np.uint32)


def _keys(num_scales: int, flipped: bool = False) -> list[str]:
    return [f"{'flipped_' if flipped else ''}scale_{i}" for i in range(num_scales)]


@torch.no_grad()
def tokenize_splits(tokenizer, splits: dict[str, Dataset], out_dir: str | Path, *, tokenizer_sha256: str,
                    preprocessing: dict, posterior: str | None = None, seed: int = 0, batch_size: int = 64,
                    shard_size: int = 4096, flip: bool = False, num_workers: int = 1, device: str = "cpu",
                    classes: list[str] | None = None, labels: dict[str, np.ndarray] | None = None) -> Path:
    """Encode every image of every split (images in [-1, 1], as the datasets give them) and write
    the indices in shards; returns the manifest's path. ``posterior``: "sample" or "mean" (default:
    the tokenizer's own). ``labels``: each split's class labels in item order (indices into
    ``classes``), written beside the indices. ``shard_size`` must be a multiple of ``batch_size``, so
    that batches (and the noise drawn for them) never depend on the sharding."""
    if shard_size < 1 or batch_size < 1 or shard_size % batch_size:
        raise ValueError(f"tokenize: shard_size ({shard_size}) must be a positive multiple of the batch size "
                         f"({batch_size}), so that each batch draws the same noise however the run is sharded")
    out_dir = Path(out_dir)
    posterior = posterior or tokenizer.posterior
    quantizer = tokenizer.quantizer
    scales, dtype = list(quantizer.scales), index_dtype(quantizer.codebook_size)
    counts = {name: len(ds) for name, ds in splits.items()}
    identity = {"format": FORMAT, "tokenizer_sha256": tokenizer_sha256, "preprocessing": preprocessing,
                "posterior": posterior, "seed": int(seed), "batch_size": int(batch_size),
                "shard_size": int(shard_size), "flip": bool(flip), "counts": counts,
                "classes": list(classes) if labels is not None else None}
    for name in splits if labels is not None else ():
        if len(labels[name]) != counts[name]:
            raise ValueError(f"tokenize: {len(labels[name])} labels for the {counts[name]} {name} images")
    prepare_shard_directory(out_dir, identity, STATE, "tokens")
    tokenizer = tokenizer.to(device).eval()
    latent_shape = (tokenizer.vae.latent_channels, quantizer.latent_size, quantizer.latent_size)

    def encoder(split):
        # (the images' stream, the flipped copies' stream), afresh for each split
        streams = [torch.Generator(device).manual_seed(int(seed) + i) for i in range(1 + flip)]

        def encode(images, items):
            images = images.to(device, non_blocking=True)
            views = [(_keys(len(scales)), images), (_keys(len(scales), True), images.flip(-1))][:1 + flip]
            tensors = {key: level.to("cpu").numpy().astype(dtype)
                       for (keys, view), stream in zip(views, streams)
                       for key, level in zip(keys, tokenizer.encode(view, stream, posterior=posterior))}
            if labels is not None:
                tensors["labels"] = np.asarray(labels[split][items], dtype=np.int64)
            return tensors

        def skip(count):  # a finished shard's batch: draw its noise, so the next shard's is the same
            for stream in streams:
                torch.randn((count, *latent_shape), generator=stream, device=device)

        return encode, skip if posterior == "sample" else None

    listing = write_shards(splits, out_dir, encoder, shard_size=shard_size, batch_size=batch_size,
                           num_workers=num_workers, device=device, what="tokenize")
    manifest = {**identity, "scales": scales, "codebook_size": quantizer.codebook_size, "dtype": dtype.name,
                "resolution": tokenizer.resolution, "indices_per_image": tokenizer.indices_per_image,
                "splits": listing}
    write_json(out_dir / MANIFEST, manifest)
    return out_dir / MANIFEST


def read_token_manifest(token_dir: str | Path) -> dict:
    manifest = read_manifest(token_dir, "token", f"{token_dir} holds no finished token files; run the "
                             f"tokenize stage (`coda tokenize`)", REMEDY)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{Path(token_dir) / MANIFEST} is not a {FORMAT} manifest; {REMEDY}")
    return manifest


class TokenDataset(Dataset):
    """The token files of one split: item ``i`` is (one LongTensor s x s per scale, its class label);
    the label is -1 for an item of none of the classes, and for token files written without labels.

    ``flipped=True`` (for a directory tokenized with ``flip``) appends the flipped copies: items
    ``count .. 2 count - 1`` are the flipped images, in the same order. Shards are read fully into
    memory: 680 uint16 indices per image (f16) are 1.4 KB, 1.8 GB for all of ImageNet's train set.
    """

    def __init__(self, token_dir: str | Path, split: str, flipped: bool = False):
        self.manifest = read_token_manifest(token_dir)
        if split in self.manifest["splits"] and flipped and not self.manifest["flip"]:
            raise ValueError(f"{token_dir} was tokenized without flipped copies (tokenize.flip: false)")
        self.scales = list(self.manifest["scales"])
        self.classes = self.manifest.get("classes")
        keys = (_keys(len(self.scales)) + (_keys(len(self.scales), True) if flipped else [])
                + (["labels"] if self.classes is not None else []))
        parts = read_split(token_dir, self.manifest, split, keys, "token", REMEDY, framework="numpy")
        levels = [np.concatenate(parts[key]) for key in _keys(len(self.scales))]
        if flipped:
            levels = [np.concatenate([level, np.concatenate(parts[key])])
                      for level, key in zip(levels, _keys(len(self.scales), True))]
        self.levels = levels  # kept narrow; each item is widened to int64 as it is read
        labels = (np.concatenate(parts["labels"]) if self.classes is not None
                  else np.full(len(levels[0]) // (1 + flipped), -1, dtype=np.int64))
        self.labels = np.concatenate([labels, labels]) if flipped else labels  # a flipped copy keeps its class

    def __len__(self) -> int:
        return len(self.levels[0])

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], int]:
        return [torch.from_numpy(level[index].astype(np.int64)) for level in self.levels], int(self.labels[index])

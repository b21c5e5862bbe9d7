"""The latent cache: an interrupted run resumes bit for bit, and shards made by another VAE or
preprocessing are recomputed, never reused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset

from coda.cache import LatentDataset, cache_latents
from coda.shards import shard_name
from coda.data.datasets import ArrayImages
from coda.vae import ContinuousVAE

SHARD = 4  # train: 10 images -> shards of 4, 4 and 2; val: 3 images -> one shard
PREPROCESSING = {"dataset": "test", "resolution": 16, "crop": "center", "seed": 0}


def _array_images(path, n, seed):
    with open(path, "wb") as fh:
        np.save(fh, np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8))
    return ArrayImages(path)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    directory = tmp_path_factory.mktemp("images")
    return {"train": _array_images(directory / "train.npy", 10, 0),
            "val": _array_images(directory / "val.npy", 3, 1)}


def tiny_vae(seed=0, counts=None):
    """A random f2 VAE; ``counts`` collects the batch size of every encoder call."""
    vae = ContinuousVAE.small(seed=seed, block_out_channels=[8, 8], norm_num_groups=4,
                              latent_channels=4).freeze()
    if counts is not None:
        encode = vae.encode
        vae.encode = lambda images: counts.append(len(images)) or encode(images)
    return vae


def run(vae, splits, out, vae_hash="vae-a", preprocessing=PREPROCESSING):
    return cache_latents(vae, splits, out, vae_hash=vae_hash, preprocessing=preprocessing,
                         shard_size=SHARD, batch_size=2, num_workers=0)


def shards(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.safetensors"))}


def mtimes(directory):
    return {p.name: p.stat().st_mtime_ns for p in directory.glob("*.safetensors")}


class CrashAt(Dataset):
    """The dataset, but reading index ``at`` fails, as a run killed at that point would stop."""

    def __init__(self, dataset, at):
        self.dataset, self.at = dataset, at

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        if index == self.at:
            raise RuntimeError("killed")
        return self.dataset[index]


def test_an_interrupted_cache_resumes_only_the_missing_shards_bit_for_bit(tmp_path, splits):
    reference = tmp_path / "reference"
    run(tiny_vae(), splits, reference)

    out = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="killed"):
        run(tiny_vae(), {"train": CrashAt(splits["train"], at=8), "val": splits["val"]}, out)
    assert sorted(shards(out)) == [shard_name("train", 0), shard_name("train", 1)]
    assert not (out / "manifest.json").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    finished = mtimes(out)

    counts = []
    run(tiny_vae(counts=counts), splits, out)
    assert sum(counts) == 2 + 3  # the third train shard and the val shard, nothing else
    assert {name: mtimes(out)[name] for name in finished} == finished
    assert shards(out) == shards(reference)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == json.loads((reference / "manifest.json").read_text())
    assert manifest["splits"]["train"]["shards"] == [shard_name("train", i) for i in range(3)]

    counts.clear()
    run(tiny_vae(counts=counts), splits, out)  # complete: nothing is encoded, the manifest stays
    assert counts == [] and json.loads((out / "manifest.json").read_text()) == manifest
    torch.testing.assert_close(LatentDataset(out, "val")[2][0], LatentDataset(reference, "val")[2][0],
                               rtol=0, atol=0)


def test_shards_of_another_vae_or_preprocessing_are_recomputed(tmp_path, splits):
    out = tmp_path / "cache"
    run(tiny_vae(seed=0), splits, out, vae_hash="vae-a")
    before = shards(out)

    counts = []
    run(tiny_vae(seed=1, counts=counts), splits, out, vae_hash="vae-b")
    assert sum(counts) == 10 + 3
    fresh = tmp_path / "fresh"
    run(tiny_vae(seed=1), splits, fresh, vae_hash="vae-b")
    assert shards(out) == shards(fresh) and shards(out) != before
    assert json.loads((out / "manifest.json").read_text())["vae_hash"] == "vae-b"

    counts.clear()
    adm = {**PREPROCESSING, "crop": "adm"}
    run(tiny_vae(seed=1, counts=counts), splits, out, vae_hash="vae-b", preprocessing=adm)
    assert sum(counts) == 10 + 3
    assert json.loads((out / "manifest.json").read_text())["preprocessing"] == adm

    fewer = {"train": Subset(splits["train"], range(5)), "val": splits["val"]}
    run(tiny_vae(seed=1), fewer, out, vae_hash="vae-b", preprocessing=adm)
    assert sorted(shards(out)) == [shard_name("train", 0), shard_name("train", 1), shard_name("val", 0)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"] == {"count": 5, "shards": [shard_name("train", 0),
                                                                  shard_name("train", 1)]}
    assert len(LatentDataset(out, "train")) == 5

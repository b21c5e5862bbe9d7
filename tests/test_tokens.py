"""Token files for a generator (coda/token_files.py): the val tokens decode to the evaluate stage's
reconstructions bit for bit, an interrupted run resumes by shard, and shards of another tokenizer
are recomputed."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset

from coda.data.datasets import ArrayImages
from coda.evaluation.evaluate import evaluate_tokenizer
from coda.pixels import to_uint8
from coda.token_files import TokenDataset, index_dtype, tokenize_splits
from test_cache import CrashAt
from test_tokenizer import small_tokenizer

BATCH, SHARD = 2, 4  # val: 7 images -> shards of 4 and 3; train: 5 images -> 4 and 1


def _images(path, n, seed):
    np.save(path, np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8))
    return ArrayImages(path)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    directory = tmp_path_factory.mktemp("images")
    return {"train": _images(directory / "train.npy", 5, 0), "val": _images(directory / "val.npy", 7, 1)}


class Counting(Dataset):
    """The dataset, counting the images read (each is read once per encoding)."""

    def __init__(self, dataset, reads):
        self.dataset, self.reads = dataset, reads

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.reads.append(index)
        return self.dataset[index]


def run(splits, out, tokenizer=None, sha="tok-a", flip=True, **kwargs):
    return tokenize_splits(tokenizer or small_tokenizer(posterior="sample"), splits, out, tokenizer_sha256=sha,
                           preprocessing={"dataset": "test"}, seed=0, batch_size=BATCH, shard_size=SHARD,
                           flip=flip, num_workers=0, **kwargs)


def shards(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.safetensors"))}


def test_val_tokens_decode_to_the_evaluate_stage_reconstructions_bit_for_bit(tmp_path, splits):
    tokenizer = small_tokenizer(posterior="sample")
    evaluate_tokenizer(tokenizer, splits["val"].path, tmp_path / "metrics.json", batch_size=BATCH, seed=0,
                       recon_samples_out=tmp_path / "recon.npy", num_recon_samples=7, perceptual=False,
                       device="cpu")
    run(splits, tmp_path / "tokens", tokenizer)
    tokens = TokenDataset(tmp_path / "tokens", "val")
    decoded = [to_uint8(tokenizer.decode(indices)).permute(0, 2, 3, 1).numpy()
               for indices, _ in DataLoader(tokens, batch_size=BATCH)]
    assert np.array_equal(np.concatenate(decoded), np.load(tmp_path / "recon.npy"))
    # the posterior sample: the mean would give other tokens
    means = small_tokenizer(posterior="mean").encode(splits["val"][0][None])
    assert any(not torch.equal(a[0], b) for a, b in zip(means, tokens[0][0]))


def test_layout_dtypes_manifest_and_flipped_copies(tmp_path, splits):
    manifest = json.loads(run(splits, tmp_path / "tokens").read_text())
    assert manifest["scales"] == [1, 2, 4, 8] and manifest["dtype"] == "uint16" and manifest["flip"]
    assert manifest["splits"]["val"] == {"count": 7, "shards": ["val-00000.safetensors", "val-00001.safetensors"]}
    assert {k: manifest[k] for k in ("tokenizer_sha256", "posterior", "resolution", "indices_per_image")} == \
        {"tokenizer_sha256": "tok-a", "posterior": "sample", "resolution": 16, "indices_per_image": 85}
    with safe_open(tmp_path / "tokens" / "val-00001.safetensors", framework="numpy") as f:
        assert sorted(f.keys()) == sorted([f"scale_{i}" for i in range(4)] + [f"flipped_scale_{i}" for i in range(4)])
        assert f.get_tensor("scale_3").dtype == np.uint16 and f.get_tensor("scale_3").shape == (3, 8, 8)
    plain, both = TokenDataset(tmp_path / "tokens", "train"), TokenDataset(tmp_path / "tokens", "train", flipped=True)
    assert len(plain) == 5 and len(both) == 10
    assert all(torch.equal(a, b) and a.dtype == torch.int64 for a, b in zip(plain[3][0], both[3][0]))
    # item count + i is image i mirrored (with the posterior mean, the tokens are the mirror's own)
    run(splits, tmp_path / "mean", small_tokenizer(posterior="mean"))
    mirrored = small_tokenizer(posterior="mean").encode(splits["train"][3][None].flip(-1))
    assert all(torch.equal(a, b[0]) for a, b in zip(TokenDataset(tmp_path / "mean", "train", flipped=True)[8][0], mirrored))
    # flipped copies draw their own noise: switching flip off leaves every other token as it was
    run(splits, tmp_path / "noflip", flip=False)
    assert all(torch.equal(a, b) for a, b in zip(TokenDataset(tmp_path / "noflip", "train")[3][0], plain[3][0]))
    assert index_dtype(1 << 16) == np.uint16 and index_dtype((1 << 16) + 1) == np.uint32
    with pytest.raises(ValueError, match="without flipped copies"):
        TokenDataset(tmp_path / "noflip", "train", flipped=True)


def test_labels_are_written_per_shard_and_returned_with_each_item(tmp_path, splits):
    labels = {"train": np.array([2, 0, 1, 1, 0]), "val": np.array([0, 1, 2, -1, 0, 1, 2])}
    manifest = json.loads(run(splits, tmp_path / "tokens", classes=["a", "b", "c"], labels=labels).read_text())
    assert manifest["classes"] == ["a", "b", "c"]
    with safe_open(tmp_path / "tokens" / "val-00001.safetensors", framework="numpy") as f:
        assert f.get_tensor("labels").tolist() == [0, 1, 2]
    val, train = TokenDataset(tmp_path / "tokens", "val"), TokenDataset(tmp_path / "tokens", "train", flipped=True)
    assert [val[i][1] for i in range(7)] == labels["val"].tolist()
    assert [train[i][1] for i in range(10)] == labels["train"].tolist() * 2  # a flipped copy keeps its class
    assert train.classes == ["a", "b", "c"]
    assert TokenDataset(run(splits, tmp_path / "unlabelled").parent, "val")[0][1] == -1
    with pytest.raises(ValueError, match="4 labels for the 5 train images"):
        run(splits, tmp_path / "bad", classes=["a"], labels={"train": np.zeros(4, int), "val": np.zeros(7, int)})


def test_an_interrupted_run_resumes_by_shard_bit_for_bit(tmp_path, splits):
    reference = tmp_path / "reference"
    run(splits, reference)
    out = tmp_path / "tokens"
    with pytest.raises(RuntimeError, match="killed"):
        run({"train": splits["train"], "val": CrashAt(splits["val"], at=5)}, out)
    assert sorted(shards(out)) == ["train-00000.safetensors", "train-00001.safetensors", "val-00000.safetensors"]
    assert not (out / "manifest.json").exists()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")}

    reads = []
    run({"train": Counting(splits["train"], reads), "val": Counting(splits["val"], reads)}, out)
    assert sorted(reads) == [4, 5, 6]  # only the last val shard is encoded, its noise replayed to the same
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors") if p.name in finished} == finished
    assert shards(out) == shards(reference)
    assert json.loads((out / "manifest.json").read_text()) == json.loads((reference / "manifest.json").read_text())

    reads.clear()
    run({"train": Counting(splits["train"], reads), "val": Counting(splits["val"], reads)}, out)
    assert reads == []  # finished: a rerun encodes nothing


def test_shards_of_another_tokenizer_are_recomputed_and_bad_settings_refused(tmp_path, splits):
    out = tmp_path / "tokens"
    run(splits, out, sha="tok-a")
    other = small_tokenizer(posterior="sample", seed=1)
    run(splits, out, other, sha="tok-b")
    run(splits, tmp_path / "fresh", other, sha="tok-b")
    assert shards(out) == shards(tmp_path / "fresh")
    with pytest.raises(ValueError, match="multiple of the batch size"):
        tokenize_splits(other, splits, tmp_path / "x", tokenizer_sha256="t", preprocessing={}, batch_size=3,
                        shard_size=4)
    with pytest.raises(FileNotFoundError, match="run the tokenize stage"):
        TokenDataset(tmp_path / "nothing", "val")

"""`coda train-generator` and `coda sample` end to end on a tiny tokenizer's tokens: they run, write
what they promise (generator folder, PNGs, tokens, ADM-style npz), reproduce from a seed, and refuse
another tokenizer's tokens, a generator's wrong tokenizer and an unknown class with one message."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors import safe_open

from coda.cli import main
from coda.data.datasets import ArrayImages
from coda.tokenizer import tokenizer_sha256
from coda.token_files import tokenize_splits
from test_tokenizer import small_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("generation")
    for name, seed in (("tok_a", 0), ("tok_b", 1)):
        small_tokenizer(seed=seed).save_pretrained(root / name)
    tokenizer = small_tokenizer(seed=0)
    arrays = {}
    for split, n in (("train", 8), ("val", 4)):
        np.save(root / f"{split}.npy", np.random.default_rng(n).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8))
        arrays[split] = ArrayImages(root / f"{split}.npy")
    tokenize_splits(tokenizer, arrays, root / "tokens", tokenizer_sha256=tokenizer_sha256(tokenizer, root / "tok_a"),
                    preprocessing={}, batch_size=4, shard_size=4, flip=True, num_workers=0,
                    classes=["brick", "grass"], labels={"train": np.arange(8) % 2, "val": np.zeros(4, int)})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["scale"] = "tiny"
    params["scales"]["tiny"]["generator"] = {"depth": 1, "width": 16, "heads": 2, "batch_size": 4, "global_batch": 8,
                                             "max_steps": 3, "checkpoint_every": 2, "device": "cpu"}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def train(root, tokenizer="tok_a", out="run"):
    return main(["train-generator", "--params", str(root / "params.yaml"), "--tokens", str(root / "tokens"),
                 "--tokenizer", str(root / tokenizer), "--out", str(root / out)])


def sample(root, out, *extra, tokenizer="tok_a"):
    return main(["sample", "--generator", str(root / "run" / "generator"), "--tokenizer", str(root / tokenizer),
                 "--out", str(root / out), *extra])


def test_train_then_sample_writes_pngs_tokens_and_an_adm_npz(setup, capsys):
    assert train(setup) == 0
    assert (setup / "run" / "generator" / "model.safetensors").exists()
    run = json.loads((setup / "run" / "run.json").read_text())
    assert run["status"] == "finished" and run["steps"] == 3 and run["items"] == 16  # flipped copies included
    assert sample(setup, "s1", "--classes", "grass", "0", "--per-class", "2", "--batch-size", "3") == 0
    with np.load(setup / "s1" / "samples.npz") as npz:
        assert npz["arr_0"].shape == (4, 16, 16, 3) and npz["arr_0"].dtype == np.uint8
        assert npz["arr_1"].tolist() == [1, 1, 0, 0]
        first = npz["arr_0"].copy()
    assert len(list((setup / "s1" / "images").glob("*.png"))) == 4
    with safe_open(setup / "s1" / "tokens.safetensors", framework="numpy") as f:
        assert f.get_tensor("scale_3").shape == (4, 8, 8) and f.get_tensor("labels").tolist() == [1, 1, 0, 0]
    record = json.loads((setup / "s1" / "samples.json").read_text())
    assert record["images_per_s"] > 0 and record["sampling"]["cfg"] == 1.5
    assert "images/s" in capsys.readouterr().out
    # the same seed and batch size give the same samples (classes by index or by name alike)
    assert sample(setup, "s2", "--classes", "1", "brick", "--per-class", "2", "--batch-size", "3", "--no-png") == 0
    with np.load(setup / "s2" / "samples.npz") as npz:
        assert np.array_equal(npz["arr_0"], first)


@pytest.mark.parametrize("case, message", [
    ("tokens", "belongs to another tokenizer"),
    ("generator", "belongs to another tokenizer"),
    ("class", "unknown class 'moss'"),
    ("missing", "tokenizer not found"),
])
def test_mismatches_end_with_one_message(setup, capsys, case, message):
    if not (setup / "run" / "generator").exists():
        assert train(setup) == 0
    capsys.readouterr()
    if case == "tokens":
        code = train(setup, tokenizer="tok_b", out="other")
    elif case == "generator":
        code = sample(setup, "x", tokenizer="tok_b")
    elif case == "class":
        code = sample(setup, "x", "--classes", "moss")
    else:
        code = sample(setup, "x", tokenizer="nowhere")
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err

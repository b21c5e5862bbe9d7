"""The tokenize stage: one experiment's tokenizer over the prepared train and val sets -> token shards."""
from __future__ import annotations

from pathlib import Path

from ..artifacts import VAL_NPY
from ..config import experiment_config, scale_block
from ..data.datasets import ArrayImages, class_labels, read_meta, train_dataset
from ..devices import pick_device
from ..tokenizer import Tokenizer, tokenizer_sha256
from ..token_files import tokenize_splits


def tokenize(params: dict, *, experiment: str, prepared: str, tokenizer: str, out: str) -> None:
    block = scale_block(params)
    cfg = dict(block.get("tokenize", {}))
    model = Tokenizer.from_pretrained(tokenizer)
    posterior = experiment_config(params, experiment).get("posterior", model.posterior)  # as evaluated
    # The fixed train crops of the cache stage; val as evaluated. The noise stream is evaluate's (coda/token_files.py).
    splits = {"train": train_dataset(prepared), "val": ArrayImages(Path(prepared) / VAL_NPY)}
    meta = read_meta(prepared)
    preprocessing = {k: meta.get(k) for k in ("dataset", "resolution", "crop", "train_crop", "seed")}
    tokenize_splits(model, splits, out, tokenizer_sha256=tokenizer_sha256(model, Path(tokenizer)),
                    preprocessing=preprocessing, posterior=posterior, seed=params.get("evaluate", {}).get("seed", 0),
                    batch_size=block.get("evaluate", {}).get("batch_size", 16), device=str(pick_device()), **cfg,
                    **dict(zip(("classes", "labels"), class_labels(prepared))))

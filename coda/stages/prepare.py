"""The prepare stage: images -> the prepared train set and the preprocessed uint8 validation set."""
from __future__ import annotations

import json

from ..config import ParamsError, scale_block
from ..data.demo import prepare_demo
from ..data.folder import prepare_folder


def prepare(params: dict, *, out: str) -> None:
    cfg = dict(scale_block(params)["prepare"])
    policy = params.get("prepare", {}).get("on_bad_image", "skip")
    source = cfg.pop("source")
    if source == "demo":
        cfg.pop("crop", None)
        meta = prepare_demo(out, on_bad_image=policy, **cfg)
    else:
        for key in ("train_dir", "val_dir"):
            if key not in cfg:
                raise ParamsError(f"scales.{params['scale']}.prepare.{key} is required for source: folder")
        cfg.pop("seed", None), cfg.pop("crops_per_train_photo", None), cfg.pop("crops_per_val_photo", None)
        meta = prepare_folder(cfg.pop("train_dir"), cfg.pop("val_dir"), out, on_bad_image=policy, **cfg)
    print(json.dumps({k: meta[k] for k in meta if k in ("dataset", "counts", "resolution")}, default=str))

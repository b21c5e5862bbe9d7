"""The cache stage: posterior moments of the frozen VAE for the train and validation images."""
from __future__ import annotations

import json
from pathlib import Path

from ..artifacts import VAE_DIR, VAE_INFO, VAL_NPY
from ..cache import cache_latents
from ..config import scale_block
from ..data.datasets import ArrayImages, read_meta, train_dataset
from ..devices import pick_device
from ..vae import ContinuousVAE


def cache(params: dict, *, prepared: str, vae: str, out: str) -> None:
    cfg = dict(scale_block(params).get("cache", {}))
    info = json.loads((Path(vae) / VAE_INFO).read_text())
    model = ContinuousVAE.from_pretrained(Path(vae) / VAE_DIR).freeze()
    # Fixed crops: the cache holds one crop per training image (seeded), not a fresh one per epoch.
    splits = {"train": train_dataset(prepared), "val": ArrayImages(Path(prepared) / VAL_NPY)}
    meta = read_meta(prepared)
    preprocessing = {k: meta.get(k) for k in ("dataset", "resolution", "crop", "seed")}
    cache_latents(model, splits, out, vae_hash=info["hash"], preprocessing=preprocessing,
                  device=str(pick_device()), **cfg)

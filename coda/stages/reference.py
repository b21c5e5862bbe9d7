"""The reference stage: the reference side of every Frechet distance (Inception, VGG16), once per
validation set."""
from __future__ import annotations

import json
from pathlib import Path

from ..artifacts import REFERENCE_FILE, VAL_NPY
from ..config import scale_block
from ..evaluation.evaluate import compute_reference


def reference(params: dict, *, prepared: str, out: str) -> None:
    cfg, settings = scale_block(params).get("evaluate", {}), params.get("evaluate", {})
    metadata = compute_reference(Path(prepared) / VAL_NPY, Path(out) / REFERENCE_FILE,
                                 batch_size=cfg.get("batch_size", 16), max_images=cfg.get("max_images"),
                                 inception_weights=settings.get("inception_weights"),
                                 fid_protocol=settings.get("fid_protocol", "torch-fidelity"),
                                 vgg16=cfg.get("rfd_vgg16", True))
    print(json.dumps({"num_images": metadata["num_images"], "feature_sets": metadata["feature_sets"]}))

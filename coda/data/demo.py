"""The demo dataset: many crops of the real photographs bundled in installed packages.

Split by photograph: ``VAL_PHOTOS`` (chelsea, coffee, china, grace_hopper) give the validation
crops, every other photo gives training crops, so no validation photograph is ever seen in
training. Each crop: the photo is resized (Lanczos) so its short side is one of ``NUM_SCALES``
sizes spaced geometrically between ``resolution`` and ``MAX_SCALE * resolution`` (never above the
photo's own short side), then a random ``resolution`` x ``resolution`` window is cut. Everything is
drawn from a generator seeded by (seed, photo name, split), so the arrays are identical for a seed
and independent of which other photos are available.

Writes into ``out_dir``: ``train.npy`` and ``val.npy`` (uint8 N x res x res x 3),
``train_files.tsv`` / ``val_files.tsv`` (index, photo, short_side, left, top),
``prepare_report.json`` (photos that could not be loaded) and ``meta.json`` (which photo went where).
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ..artifacts import META, PREPARE_REPORT, TRAIN_FILES, TRAIN_MANIFEST, TRAIN_NPY, VAL_FILES, VAL_NPY
from ..files import library_versions, write_json
from .bad_images import BadImage, reporting
from .crops import resize_short_side
from .layout import FORMAT_VERSION, npy_rows, remove_outputs, write_tsv
from .photos import PHOTOS, VAL_PHOTOS, load_photo

log = logging.getLogger(__name__)

NUM_SCALES = 4
MAX_SCALE = 3.0


def _rng(seed: int, name: str, split: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), zlib.crc32(split.encode())])


def scale_levels(short_side: int, resolution: int) -> list[int]:
    """Short-side sizes a photo is resized to before cropping (geometric, deduplicated)."""
    hi = max(resolution, min(int(round(MAX_SCALE * resolution)), int(short_side)))
    return sorted({int(round(v)) for v in np.geomspace(resolution, hi, NUM_SCALES)})


def photo_crops(photo: np.ndarray, resolution: int, n: int, rng: np.random.Generator):
    """``n`` random crops of one photo at a few scales: [(crop, short_side, left, top)]."""
    img = Image.fromarray(photo)
    levels = scale_levels(min(img.size), resolution)
    resized = [np.asarray(resize_short_side(img, s, Image.LANCZOS)) for s in levels]
    crops = []
    for _ in range(n):
        i = int(rng.integers(len(levels)))
        h, w = resized[i].shape[:2]
        top = int(rng.integers(0, h - resolution + 1))
        left = int(rng.integers(0, w - resolution + 1))
        crops.append((resized[i][top:top + resolution, left:left + resolution], levels[i], left, top))
    return crops


def _make_split(split: str, names, out_dir: Path, report, resolution: int, crops_per_photo: int,
                seed: int):
    loaded = []
    for name in names:
        try:
            loaded.append((name, load_photo(name)))
            report.add_ok()
        except BadImage as exc:
            report.add_bad(exc.path, exc.reason, exc.detail)
    if not loaded:
        raise ValueError(f"demo: none of the {split} photos {list(names)} could be loaded; "
                         f"see {out_dir / PREPARE_REPORT}")
    npy, tsv = (TRAIN_NPY, TRAIN_FILES) if split == "train" else (VAL_NPY, VAL_FILES)
    rows, photos = [], []
    with npy_rows(out_dir / npy, len(loaded) * crops_per_photo, (resolution, resolution, 3)) as writer:
        for name, arr in loaded:
            photos.append({"name": name, "package": PHOTOS[name][0], "height": int(arr.shape[0]),
                           "width": int(arr.shape[1]), "first": writer.n, "count": crops_per_photo})
            for crop, short, left, top in photo_crops(arr, resolution, crops_per_photo,
                                                      _rng(seed, name, split)):
                rows.append((writer.append(crop[None]), name, short, left, top))
    write_tsv(out_dir / tsv, ("index", "photo", "short_side", "left", "top"), rows)
    return photos, len(rows)


def prepare_demo(out_dir, resolution: int = 64, crops_per_train_photo: int = 160,
                 crops_per_val_photo: int = 64, seed: int = 0, train_photos=None,
                 on_bad_image: str = "skip") -> dict:
    """Build the demo train/val crops from the bundled photographs; returns the meta.json contents.

    ``train_photos=None``: every photo not in ``VAL_PHOTOS``. A photo that cannot be loaded
    offline is skipped and listed in the report (or raises ``BadImageError`` under
    ``on_bad_image="error"``).
    """
    resolution = int(resolution)
    val_photos = list(VAL_PHOTOS)
    train_photos = [n for n in PHOTOS if n not in val_photos] if train_photos is None else list(train_photos)
    overlap = sorted(set(val_photos) & set(train_photos))
    if overlap:
        raise ValueError(f"photos {overlap} are in both train and validation")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with reporting(out_dir / PREPARE_REPORT, on_bad_image, {"train": None, "val": None},
                   source="bundled photos") as reports:  # refuses a bad on_bad_image before any removal
        remove_outputs(out_dir, (META, TRAIN_MANIFEST))
        train_info, n_train = _make_split("train", train_photos, out_dir, reports["train"], resolution,
                                          crops_per_train_photo, seed)
        val_info, n_val = _make_split("val", val_photos, out_dir, reports["val"], resolution,
                                      crops_per_val_photo, seed)
    log.info("demo: %d train crops from %d photos, %d val crops from %d photos",
             n_train, len(train_info), n_val, len(val_info))
    bad = reports["train"].bad + reports["val"].bad
    meta = {
        "format_version": FORMAT_VERSION, "scale": "demo", "dataset": "demo-photos", "resolution": resolution,
        "crop": "multiscale-random", "seed": int(seed), "on_bad_image": on_bad_image,
        "crops_per_train_photo": int(crops_per_train_photo), "crops_per_val_photo": int(crops_per_val_photo),
        "num_scales": NUM_SCALES, "max_scale": MAX_SCALE,
        "counts": {"train": n_train, "val": n_val,
                   "train_photos": len(train_info), "val_photos": len(val_info),
                   "train_skipped": reports["train"].skipped, "val_skipped": reports["val"].skipped},
        "train_photos": train_info, "val_photos": val_info, "unavailable": [f["path"] for f in bad],
        "files": {"train": TRAIN_NPY, "train_files": TRAIN_FILES, "val": VAL_NPY,
                  "val_files": VAL_FILES, "report": PREPARE_REPORT},
        "versions": library_versions(),
    }
    write_json(out_dir / META, meta)
    return meta

"""The demo dataset: many crops of the real photographs bundled in installed packages.

Split by photograph: the photos in ``val_photos`` (default ``DEFAULT_VAL_PHOTOS``: chelsea, coffee,
china, grace_hopper) give the validation crops, every other available photo gives training crops,
so no validation photograph is ever seen in training. Each crop: the photo is resized (Lanczos) so
its short side is one of ``num_scales`` sizes spaced geometrically between ``resolution`` and
``max_scale * resolution`` (never above the photo's own short side), then a random
``resolution`` x ``resolution`` window is cut. Everything is drawn from a generator seeded by
(seed, photo name, split), so the arrays are identical for a seed and independent of which other
photos are available.

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

from .images import BadImage
from .npy import NpyRowWriter
from .outputs import (FORMAT_VERSION, META, REPORT, TRAIN_FILES, TRAIN_MANIFEST, TRAIN_NPY,
                      VAL_FILES, VAL_NPY, library_versions, remove_stale, write_tsv)
from .photos import DEFAULT_VAL_PHOTOS, PHOTOS, load_photo
from .report import BadImageError, BadImageReport, check_policy, write_json, write_reports
from .transforms import resize_short_side

log = logging.getLogger(__name__)

DEFAULT_TRAIN_CROPS = 160  # x 12 training photos = 1920 crops
DEFAULT_VAL_CROPS = 64     # x 4 validation photos = 256 crops


def _rng(seed: int, name: str, split: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), zlib.crc32(split.encode())])


def scale_levels(short_side: int, resolution: int, num_scales: int, max_scale: float) -> list[int]:
    """Short-side sizes a photo is resized to before cropping (geometric, deduplicated)."""
    hi = max(resolution, min(int(round(max_scale * resolution)), int(short_side)))
    levels = np.geomspace(resolution, hi, max(1, int(num_scales)))
    return sorted({int(round(v)) for v in levels})


def photo_crops(photo: np.ndarray, resolution: int, n: int, rng: np.random.Generator,
                num_scales: int = 4, max_scale: float = 3.0):
    """``n`` random crops of one photo at a few scales: (uint8 n x res x res x 3, [(short, left, top)])."""
    img = Image.fromarray(photo)
    levels = scale_levels(min(img.size), resolution, num_scales, max_scale)
    resized = [np.asarray(resize_short_side(img, s, Image.LANCZOS)) for s in levels]
    out = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    where = []
    for k in range(n):
        i = int(rng.integers(len(levels)))
        arr = resized[i]
        h, w = arr.shape[:2]
        top = int(rng.integers(0, h - resolution + 1))
        left = int(rng.integers(0, w - resolution + 1))
        out[k] = arr[top:top + resolution, left:left + resolution]
        where.append((levels[i], left, top))
    return out, where


def _make_split(split: str, names, out_dir: Path, report: BadImageReport, resolution: int,
                crops_per_photo: int, seed: int, num_scales: int, max_scale: float):
    loaded = []
    for name in names:
        try:
            loaded.append((name, load_photo(name)))
        except BadImage as exc:
            report.add_exception(exc)
            continue
        report.add_ok(name)
    if not loaded:
        raise ValueError(f"demo: none of the {split} photos {list(names)} could be loaded; see "
                         f"{out_dir / REPORT}")
    npy, tsv = (TRAIN_NPY, TRAIN_FILES) if split == "train" else (VAL_NPY, VAL_FILES)
    rows, photos = [], []
    with NpyRowWriter(out_dir / npy, len(loaded) * crops_per_photo,
                      (resolution, resolution, 3)) as writer:
        for name, arr in loaded:
            crops, where = photo_crops(arr, resolution, crops_per_photo,
                                       _rng(seed, name, split), num_scales, max_scale)
            first = writer.n
            for crop, (short, left, top) in zip(crops, where):
                rows.append((writer.append(crop), name, short, left, top))
            photos.append({"name": name, "package": PHOTOS[name][0],
                           "height": int(arr.shape[0]), "width": int(arr.shape[1]),
                           "first": first, "count": len(crops)})
        writer.close()
    write_tsv(out_dir / tsv, ("index", "photo", "short_side", "left", "top"), rows)
    return photos, len(rows)


def prepare_demo(out_dir, resolution: int = 64, crops_per_train_photo: int = DEFAULT_TRAIN_CROPS,
                 crops_per_val_photo: int = DEFAULT_VAL_CROPS, seed: int = 0,
                 val_photos=DEFAULT_VAL_PHOTOS, train_photos=None, on_bad_image: str = "skip",
                 num_scales: int = 4, max_scale: float = 3.0) -> dict:
    """Build the demo train/val crops from the bundled photographs; returns the meta.json contents.

    ``train_photos=None``: every known photo not in ``val_photos``. A photo that cannot be loaded
    offline is skipped and listed in the report (or raises ``BadImageError`` under
    ``on_bad_image="error"``).
    """
    check_policy(on_bad_image)
    resolution = int(resolution)
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    if crops_per_train_photo < 1 or crops_per_val_photo < 1:
        raise ValueError("crops_per_train_photo and crops_per_val_photo must be >= 1")
    val_photos = list(val_photos)
    if train_photos is None:
        train_photos = [n for n in PHOTOS if n not in val_photos]
    train_photos = list(train_photos)
    unknown = sorted(set(val_photos + train_photos) - set(PHOTOS))
    if unknown:
        raise ValueError(f"unknown demo photos {unknown}: expected names from {sorted(PHOTOS)}")
    overlap = sorted(set(val_photos) & set(train_photos))
    if overlap:
        raise ValueError(f"photos {overlap} are in both train and validation")
    if not val_photos or not train_photos:
        raise ValueError("the demo needs at least one train and one validation photo")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale(out_dir, (META, TRAIN_MANIFEST))
    train_rep, val_rep = BadImageReport(on_bad_image), BadImageReport(on_bad_image)
    report_path = out_dir / REPORT
    try:
        train_info, n_train = _make_split("train", train_photos, out_dir, train_rep, resolution,
                                          crops_per_train_photo, seed, num_scales, max_scale)
        val_info, n_val = _make_split("val", val_photos, out_dir, val_rep, resolution,
                                      crops_per_val_photo, seed, num_scales, max_scale)
    except BadImageError as exc:  # the finally clause writes the report before this propagates
        raise BadImageError(exc.path, exc.reason, exc.detail, report_path) from None
    finally:
        write_reports(report_path, {"train": train_rep, "val": val_rep},
                      on_bad_image=on_bad_image, source="bundled photos")
    log.info("demo: %d train crops from %d photos, %d val crops from %d photos",
             n_train, len(train_info), n_val, len(val_info))

    meta = {
        "format_version": FORMAT_VERSION,
        "scale": "demo",
        "dataset": "demo-photos",
        "resolution": resolution,
        "crop": "multiscale-random",
        "seed": int(seed),
        "on_bad_image": on_bad_image,
        "crops_per_train_photo": int(crops_per_train_photo),
        "crops_per_val_photo": int(crops_per_val_photo),
        "num_scales": int(num_scales),
        "max_scale": float(max_scale),
        "counts": {"train": n_train, "val": n_val,
                   "train_photos": len(train_info), "val_photos": len(val_info),
                   "train_skipped": train_rep.skipped, "val_skipped": val_rep.skipped},
        "train_photos": train_info,
        "val_photos": val_info,
        "unavailable": [f["path"] for f in train_rep.bad + val_rep.bad],
        "files": {"train": TRAIN_NPY, "train_files": TRAIN_FILES, "val": VAL_NPY,
                  "val_files": VAL_FILES, "report": REPORT},
        "versions": library_versions(),
    }
    write_json(out_dir / META, meta)
    return meta

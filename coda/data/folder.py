"""Paper-scale preparation: ImageNet-style train and val folders to a prepared folder.

``prepare_folder`` writes into ``out_dir``:

- ``train_manifest.tsv``: ``path`` (relative to the train folder, POSIX), ``label`` (index into
  ``meta.json["classes"]``) and ``class`` (the first subfolder; "" for files at the top level),
  for every training file that passes a cheap header check. Full decoding happens at train time
  (``coda.data.datasets.ManifestImages``).
- ``val.npy``: uint8 N x res x res x 3, the validation set after the ``center``, ``adm`` or ``release`` crop,
  written row by row through a memory map.
- ``val_files.tsv``: ``index``, ``path``, ``class``: which file each row of ``val.npy`` came from.
- ``prepare_report.json``: the bad-image reports of both splits (``coda.data.bad_images``).
- ``meta.json``: dataset, resolution, crop, counts, seed, classes, library versions. Written last.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..artifacts import META, PREPARE_REPORT, TRAIN_FILES, TRAIN_MANIFEST, TRAIN_NPY, VAL_FILES, VAL_NPY
from ..files import library_versions, write_json
from .bad_images import BadImage, reporting
from .crops import get_crop
from .images import list_files, open_rgb, probe_image
from .layout import FORMAT_VERSION, npy_rows, remove_outputs, write_tsv

log = logging.getLogger(__name__)

CHUNK = 256  # files in flight at once: bounds memory for 1.28M paths


def _in_threads(fn, items):
    """(path, fn(path) or None, BadImage or None) for each path, in order, on a thread pool (PIL
    releases the GIL while decoding), a chunk at a time. A consumer that stops early cancels the rest."""
    def attempt(path):
        try:
            return path, fn(path), None
        except BadImage as exc:
            return path, None, exc

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(items), CHUNK):
            yield from pool.map(attempt, items[start:start + CHUNK])


def _candidates(root: Path, report, what: str, limit, seed: int, salt: int) -> list[Path]:
    """The image files under ``root`` (a seeded random subset of ``limit``, kept in sorted order)."""
    images, others = list_files(root)
    for path in others:
        report.add_ignored(path)
    if not images:
        extra = f" ({len(others)} non-image file(s) ignored)" if others else " (the folder is empty)"
        raise ValueError(f"no image files found in the {what} folder {root}{extra}; expected an "
                         f"image folder such as ImageNet class subfolders of JPEGs")
    if limit is None or limit >= len(images):
        return images
    keep = np.sort(np.random.default_rng([int(seed), salt]).choice(len(images), size=int(limit),
                                                                   replace=False))
    return [images[i] for i in keep]


def _checked(results, total: int, root: Path, report, desc: str):
    """(path, relative name, class, value) for each usable result; bad files go to ``report``."""
    for path, value, exc in tqdm(results, total=total, desc=desc, mininterval=5):
        rel = path.relative_to(root).as_posix()
        if exc is None and any(ch in rel for ch in "\t\n\r"):
            exc = BadImage("unsupported_name", path, "tab or newline in the file name")
        if exc is not None:
            report.add_bad(exc.path, exc.reason, exc.detail)
            continue
        parts = path.relative_to(root).parts
        yield path, rel, parts[0] if len(parts) > 1 else "", value


def _build_manifest(train_dir: Path, report, min_size, limit, seed):
    paths = _candidates(train_dir, report, "train", limit, seed, salt=1)
    checked = _in_threads(lambda path: probe_image(path, min_size), paths)
    rows = []
    for _, rel, cls, _ in _checked(checked, len(paths), train_dir, report, "train: header check"):
        report.add_ok()
        rows.append((rel, cls))
    classes = sorted({c for _, c in rows})
    index = {c: i for i, c in enumerate(classes)}
    return [(rel, index[c], c) for rel, c in rows], classes


def _build_val(val_dir: Path, out_dir: Path, report, resolution: int, crop_fn, min_size, limit, seed):
    paths = _candidates(val_dir, report, "validation", limit, seed, salt=2)

    def load(path):
        img, converted = open_rgb(path, min_size)
        return crop_fn(img, resolution), converted

    files = []
    with npy_rows(out_dir / VAL_NPY, len(paths), (resolution, resolution, 3)) as writer:
        for _, rel, cls, (arr, converted) in _checked(_in_threads(load, paths), len(paths), val_dir,
                                                      report, "val: decode + crop"):
            report.add_ok(converted)
            files.append((writer.append(arr[None]), rel, cls))
        if not files:
            raise ValueError(f"none of the {len(paths)} validation images in {val_dir} could be "
                             f"used; see {out_dir / PREPARE_REPORT}")
    write_tsv(out_dir / VAL_FILES, ("index", "path", "class"), files)
    return len(files)


def prepare_folder(train_dir, val_dir, out_dir, resolution: int = 256, crop: str = "center",
                   on_bad_image: str = "skip", min_size: int | None = None,
                   limit_train: int | None = None, limit_val: int | None = None, seed: int = 0,
                   dataset: str | None = None) -> dict:
    """Prepare an image-folder dataset (e.g. ImageNet); returns the ``meta.json`` contents.

    ``train_dir``/``val_dir``: folders of images, with or without class subfolders (the first
    subfolder is the class). ``crop``: "center", "adm" or "release". ``on_bad_image``: "skip" (record in
    ``prepare_report.json`` and continue) or "error" (record, write the report, raise
    ``BadImageError``). ``min_size``: smallest accepted short side in pixels (None: 16).
    ``limit_train``/``limit_val``: a seeded random subset of that many files.

    Raises FileNotFoundError / NotADirectoryError / ValueError naming the folder at fault (missing,
    a file, no images, no usable validation image).
    """
    crop_fn = get_crop(crop)
    resolution = int(resolution)
    train_dir, val_dir, out_dir = Path(train_dir), Path(val_dir), Path(out_dir)
    for what, d in (("train", train_dir), ("validation", val_dir)):
        if not d.exists():
            raise FileNotFoundError(f"{what} folder not found: {d} (expected a folder of images, "
                                    f"e.g. ImageNet class subfolders of JPEGs)")
    out_dir.mkdir(parents=True, exist_ok=True)
    with reporting(out_dir / PREPARE_REPORT, on_bad_image, {"train": train_dir, "val": val_dir},
                   min_size=min_size) as reports:  # refuses a bad on_bad_image before any removal
        remove_outputs(out_dir, (META, TRAIN_NPY, TRAIN_FILES))
        rows, classes = _build_manifest(train_dir, reports["train"], min_size, limit_train, seed)
        write_tsv(out_dir / TRAIN_MANIFEST, ("path", "label", "class"), rows)
        n_val = _build_val(val_dir, out_dir, reports["val"], resolution, crop_fn, min_size, limit_val, seed)
    train_rep, val_rep = reports["train"], reports["val"]
    log.info("prepare: train %d ok, skipped %s; val %d ok, skipped %s",
             train_rep.ok, train_rep.by_reason, val_rep.ok, val_rep.by_reason)
    meta = {
        "format_version": FORMAT_VERSION, "scale": "folder",
        "dataset": dataset or (train_dir.resolve().parent.name or "folder"),
        "train_dir": str(train_dir.resolve()), "val_dir": str(val_dir.resolve()),
        "resolution": resolution, "crop": crop, "train_crop": "lanczos-short-side-1.125x-random-crop",
        "seed": int(seed), "on_bad_image": on_bad_image, "min_size": min_size,
        "limit_train": limit_train, "limit_val": limit_val,
        "counts": {"train": len(rows), "val": n_val, "train_skipped": train_rep.skipped,
                   "val_skipped": val_rep.skipped, "train_ignored": len(train_rep.ignored),
                   "val_ignored": len(val_rep.ignored)},
        "num_classes": len(classes), "classes": classes,
        "files": {"train_manifest": TRAIN_MANIFEST, "val": VAL_NPY, "val_files": VAL_FILES,
                  "report": PREPARE_REPORT},
        "versions": library_versions(),
    }
    write_json(out_dir / META, meta)
    return meta

"""The prepare stage: image folders (paper scale) or the bundled photos (demo) to a prepared dir.

Paper scale, ``prepare_folder`` writes into ``out_dir``:

- ``train_manifest.tsv``: ``path`` (relative to the train folder, POSIX), ``label`` (index into
  ``meta.json["classes"]``) and ``class`` (the first subfolder; "" for files at the top level),
  for every training file that passes a cheap header check. Full decoding happens at train time
  (``coda.data.datasets.ManifestImages``).
- ``val.npy``: uint8 N x res x res x 3, the preprocessed validation set (crop ``center`` or ``adm``,
  evaluation.md), written row by row through a memory map and moved into place at the end.
- ``val_files.tsv``: ``index``, ``path``, ``class`` -- which file each row of ``val.npy`` came from.
- ``prepare_report.json``: the bad-image reports of both splits (``coda.data.report``).
- ``meta.json``: dataset, resolution, crop, counts, seed, classes, library versions. Written last.

The demo scale (``prepare_demo``, in ``coda.data.demo``) writes ``train.npy`` instead of a manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .demo import prepare_demo  # noqa: F401  (re-exported: both prepare entry points live here)
from .images import BadImage, list_files, open_rgb, probe_image
from .npy import NpyRowWriter
from .outputs import (FORMAT_VERSION, META, REPORT, TRAIN_FILES, TRAIN_MANIFEST, TRAIN_NPY,
                      VAL_FILES, VAL_NPY, library_versions, ordered_map, progress, remove_stale,
                      write_tsv)
from .report import BadImageError, BadImageReport, check_policy, write_json, write_reports
from .transforms import get_crop

log = logging.getLogger(__name__)

__all__ = ["prepare_folder", "prepare_demo"]


def _candidate_images(root, report: BadImageReport, what: str) -> list[Path]:
    images, others = list_files(root)
    for p in others:
        report.add_ignored(p)
    if not images:
        extra = f" ({len(others)} non-image file(s) ignored)" if others else " (the folder is empty)"
        raise ValueError(f"no image files found in the {what} folder {root}{extra}; expected an "
                         f"image folder such as ImageNet class subfolders of JPEGs")
    return images


def _subset(paths: list[Path], limit, seed: int, salt: int) -> list[Path]:
    """A seeded random subset of ``limit`` files (kept in sorted order); all when limit is None."""
    if limit is None or limit >= len(paths):
        return paths
    if limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    rng = np.random.default_rng([int(seed), salt])
    keep = np.sort(rng.choice(len(paths), size=int(limit), replace=False))
    return [paths[i] for i in keep]


def _class_of(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else ""


def _bad_name(rel: str) -> bool:
    return any(ch in rel for ch in "\t\n\r")


def _build_manifest(train_dir: Path, report: BadImageReport, min_size, limit, seed, workers):
    paths = _subset(_candidate_images(train_dir, report, "train"), limit, seed, salt=1)

    def check(path):
        try:
            probe_image(path, min_size)
            return path, None
        except BadImage as exc:
            return path, exc

    rows = []
    for path, exc in progress(ordered_map(check, paths, workers), total=len(paths),
                              desc="train: header check"):
        rel = path.relative_to(train_dir).as_posix()
        exc = exc or _name_problem(rel, path)
        if exc is not None:
            report.add_exception(exc)
            continue
        report.add_ok(path)
        rows.append((rel, _class_of(path, train_dir)))
    classes = sorted({c for _, c in rows})
    index = {c: i for i, c in enumerate(classes)}
    return [(rel, index[c], c) for rel, c in rows], classes


def _name_problem(rel: str, path: Path) -> BadImage | None:
    """A name the TSV manifests cannot hold."""
    return BadImage("unsupported_name", path, "tab or newline in the file name") if _bad_name(rel) else None


def _build_val(val_dir: Path, out_dir: Path, report: BadImageReport, resolution: int, crop: str,
               min_size, limit, seed, workers):
    crop_fn = get_crop(crop)
    paths = _subset(_candidate_images(val_dir, report, "validation"), limit, seed, salt=2)

    def load(path):
        try:
            img, converted = open_rgb(path, min_size)
            return path, crop_fn(img, resolution), converted, None
        except BadImage as exc:
            return path, None, None, exc

    files = []
    with NpyRowWriter(out_dir / VAL_NPY, len(paths), (resolution, resolution, 3)) as writer:
        for path, arr, converted, exc in progress(ordered_map(load, paths, workers),
                                                  total=len(paths), desc="val: decode + crop"):
            rel = path.relative_to(val_dir).as_posix()
            exc = exc or _name_problem(rel, path)
            if exc is not None:
                report.add_exception(exc)
                continue
            report.add_ok(path, converted)
            files.append((writer.append(arr), rel, _class_of(path, val_dir)))
        if not files:
            raise ValueError(f"none of the {len(paths)} validation images in {val_dir} could be "
                             f"used; see {out_dir / REPORT}")
        writer.close()
    write_tsv(out_dir / VAL_FILES, ("index", "path", "class"), files)
    return len(files)


def prepare_folder(train_dir, val_dir, out_dir, resolution: int = 256, crop: str = "center",
                   on_bad_image: str = "skip", min_size: int | None = None,
                   limit_train: int | None = None, limit_val: int | None = None, seed: int = 0,
                   workers: int | None = None, dataset: str | None = None) -> dict:
    """Prepare an image-folder dataset (e.g. ImageNet); returns the ``meta.json`` contents.

    ``train_dir``/``val_dir``: folders of images, with or without class subfolders (the first
    subfolder is the class). ``crop``: "center" or "adm". ``on_bad_image``: "skip" (record in
    ``prepare_report.json`` and continue) or "error" (record, write the report, raise
    ``BadImageError``). ``min_size``: smallest accepted short side in pixels (None: 16).
    ``limit_train``/``limit_val``: a seeded random subset of that many files. ``workers``: decoding
    threads (None: up to 8).

    Raises FileNotFoundError / NotADirectoryError / ValueError with a clear message for a missing
    folder, a file given as folder, a folder with no images, or a validation set with no usable
    image; ``BadImageError`` under ``on_bad_image="error"``.
    """
    check_policy(on_bad_image)
    get_crop(crop)
    resolution = int(resolution)
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    train_dir, val_dir, out_dir = Path(train_dir), Path(val_dir), Path(out_dir)
    for what, d in (("train", train_dir), ("validation", val_dir)):
        if not d.exists():
            raise FileNotFoundError(f"{what} folder not found: {d} (expected a folder of images, "
                                    f"e.g. ImageNet class subfolders of JPEGs)")
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale(out_dir, (META, TRAIN_NPY, TRAIN_FILES))

    train_rep = BadImageReport(on_bad_image, root=train_dir)
    val_rep = BadImageReport(on_bad_image, root=val_dir)
    report_path = out_dir / REPORT
    common = {"on_bad_image": on_bad_image, "min_size": min_size}
    try:
        rows, classes = _build_manifest(train_dir, train_rep, min_size, limit_train, seed, workers)
        write_tsv(out_dir / TRAIN_MANIFEST, ("path", "label", "class"), rows)
        n_val = _build_val(val_dir, out_dir, val_rep, resolution, crop, min_size, limit_val, seed,
                           workers)
    except BadImageError as exc:  # the finally clause writes the report before this propagates
        raise BadImageError(exc.path, exc.reason, exc.detail, report_path) from None
    finally:
        write_reports(report_path, {"train": train_rep, "val": val_rep}, **common)
    log.info("prepare: train %s", train_rep.summary())
    log.info("prepare: val %s", val_rep.summary())

    meta = {
        "format_version": FORMAT_VERSION,
        "scale": "folder",
        "dataset": dataset or (train_dir.resolve().parent.name or "folder"),
        "train_dir": str(train_dir.resolve()),
        "val_dir": str(val_dir.resolve()),
        "resolution": resolution,
        "crop": crop,
        "train_crop": "lanczos-short-side-1.125x-random-crop",
        "seed": int(seed),
        "on_bad_image": on_bad_image,
        "min_size": min_size,
        "limit_train": limit_train,
        "limit_val": limit_val,
        "counts": {
            "train": len(rows), "val": n_val,
            "train_skipped": train_rep.skipped, "val_skipped": val_rep.skipped,
            "train_ignored": len(train_rep.ignored), "val_ignored": len(val_rep.ignored),
        },
        "num_classes": len(classes),
        "classes": classes,
        "files": {"train_manifest": TRAIN_MANIFEST, "val": VAL_NPY, "val_files": VAL_FILES,
                  "report": REPORT},
        "versions": library_versions(),
    }
    write_json(out_dir / META, meta)
    return meta

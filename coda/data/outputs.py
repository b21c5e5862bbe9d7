"""Small shared helpers of the prepare stage: file names, TSV writing, progress bars, versions."""

from __future__ import annotations

import csv
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The files a prepared directory can hold (the contract with the later stages).
TRAIN_MANIFEST = "train_manifest.tsv"
TRAIN_NPY = "train.npy"
TRAIN_FILES = "train_files.tsv"
VAL_NPY = "val.npy"
VAL_FILES = "val_files.tsv"
REPORT = "prepare_report.json"
META = "meta.json"

FORMAT_VERSION = 1


def write_tsv(path, header, rows) -> int:
    """Write a tab-separated file atomically. Returns the number of data rows."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)
            n += 1
    os.replace(tmp, path)
    return n


def read_tsv(path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def remove_stale(out_dir, names) -> None:
    """Delete outputs of the other scale so a later stage never picks up a leftover file."""
    for name in names:
        p = Path(out_dir) / name
        if p.exists():
            p.unlink()


def progress(iterable, total=None, desc=None):
    """A tqdm bar that stays readable in logs (rare updates when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, mininterval=0.5 if interactive else 30.0,
                dynamic_ncols=True)


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def ordered_map(fn, items, workers: int | None = None):
    """``map(fn, items)`` on a thread pool, in order, with a bounded number of pending results.

    PIL releases the GIL while decoding and resizing, so threads give real parallelism here.
    ``fn`` should not raise (return errors as values).
    """
    workers = default_workers() if workers is None else max(1, int(workers))
    if workers == 1:
        yield from map(fn, items)
        return
    it = iter(items)
    window = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            for item in it:
                window.append(pool.submit(fn, item))
                if len(window) >= 4 * workers:
                    break
            while window:
                fut = window.popleft()
                nxt = next(it, _END)
                if nxt is not _END:
                    window.append(pool.submit(fn, nxt))
                yield fut.result()
        finally:  # the consumer stopped early (e.g. on_bad_image="error"): drop pending work
            for fut in window:
                fut.cancel()


_END = object()


def library_versions() -> dict:
    import numpy
    import PIL

    return {"pillow": PIL.__version__, "numpy": numpy.__version__,
            "python": sys.version.split()[0]}

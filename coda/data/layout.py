"""The files of a prepared folder (the contract with the later stages) and how they are written.

Every file goes through ``coda.files.atomic_path``: a crash leaves the previous file or none.
"""

from __future__ import annotations

import csv
import io
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

from ..files import atomic_path

# The folder's file names are in coda/artifacts.py (META, TRAIN_NPY, VAL_NPY, ...), with every other stage's.
FORMAT_VERSION = 1


def write_tsv(path, header, rows) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(header)
        writer.writerows(rows)


def read_tsv(path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def remove_outputs(out_dir, names) -> None:
    """Delete the files only the other kind of preparation writes, so no stage reads a leftover."""
    for name in names:
        (Path(out_dir) / name).unlink(missing_ok=True)


class _Rows:
    def __init__(self, array: np.memmap):
        self.array, self.n = array, 0

    def append(self, row) -> int:
        self.array[self.n] = row
        self.n += 1
        return self.n - 1


@contextmanager
def npy_rows(path, capacity: int, row_shape):
    """Yield a writer whose ``append`` adds a uint8 row to a memory-mapped ``.npy`` of ``capacity``
    rows, so the array is never held in memory (ImageNet's val.npy is 9.8 GB). On success the file
    keeps the rows appended and moves into place; on an error no file is left behind."""
    with atomic_path(path) as tmp:
        rows = _Rows(npformat.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                          shape=(int(capacity), *row_shape)))
        yield rows
        rows.array.flush()
        del rows.array
        _keep_rows(tmp, rows.n, int(np.prod(row_shape)))


def _keep_rows(path, n: int, row_bytes: int) -> None:
    """Rewrite a uint8 ``.npy`` header for ``n`` rows in place and cut the file after them. numpy
    pads its headers so the first dimension can grow to 21 digits: the length never changes."""
    with open(path, "r+b") as fh:
        npformat.read_magic(fh)  # open_memmap writes version 1.0 for a uint8 array
        shape, _, _ = npformat.read_array_header_1_0(fh)
        header = io.BytesIO()
        npformat.write_array_header_1_0(
            header, {"descr": "|u1", "fortran_order": False, "shape": (n, *shape[1:])})
        if len(header.getvalue()) != fh.tell():
            raise ValueError(f"{path}: the .npy header would change length")
        fh.seek(0)
        fh.write(header.getvalue())
        fh.truncate(fh.tell() + n * row_bytes)

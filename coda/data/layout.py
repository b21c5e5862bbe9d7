"""The files of a prepared folder (the contract with the later stages) and how they are written.

Every file goes through ``coda.files.atomic_path``: a crash leaves the previous file or none.
"""

from __future__ import annotations

import csv
import io
from contextlib import contextmanager
from pathlib import Path

from numpy.lib import format as npformat

from ..files import atomic_path
from ..pixels import RowWriter, write_npy_header

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


@contextmanager
def npy_rows(path, capacity: int, row_shape):
    """Yield a ``coda.pixels.RowWriter`` whose ``append`` adds uint8 rows to a ``.npy`` of at most
    ``capacity`` rows, written as they come, so the array is never held in memory (ImageNet's val.npy
    is 9.8 GB). On success the file keeps the rows appended and moves into place; on an error no
    file is left behind."""
    shape = (int(capacity), *row_shape)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            write_npy_header(fh, shape)
            rows = RowWriter(fh, shape)
            yield rows
        _keep_rows(tmp, rows.n)


def _keep_rows(path, n: int) -> None:
    """Rewrite a uint8 ``.npy`` header for the ``n`` rows written, in place: numpy pads its headers
    so the first dimension can grow to 21 digits, and the length never changes."""
    with open(path, "r+b") as fh:
        npformat.read_magic(fh)
        shape, _, _ = npformat.read_array_header_1_0(fh)
        header = io.BytesIO()
        write_npy_header(header, (n, *shape[1:]))
        if len(header.getvalue()) != fh.tell():
            raise ValueError(f"{path}: the .npy header would change length")
        fh.seek(0)
        fh.write(header.getvalue())

"""The reconstructions as an ADM-style ``.npz`` (``arr_0``: uint8 N x H x W x 3), written batch by batch.

ADM's evaluator, pytorch-fid and torch-fidelity all read this format. The array is written the
way ``numpy.savez`` writes it (a ``.npy`` stored in a zip entry, zip64), but one batch at a time,
so memory does not grow with N and no second copy is made on disk; ``numpy.load`` reads it back.
"""
from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

from coda.files import atomic_path

NPZ_ARRAY = "arr_0"


class _Rows:
    def __init__(self, entry, shape: tuple[int, ...]):
        self.entry, self.shape, self.n = entry, shape, 0

    def append(self, rows: np.ndarray) -> None:
        """Add uint8 rows of shape (k, *shape[1:])."""
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        if rows.shape[1:] != self.shape[1:] or self.n + len(rows) > self.shape[0]:
            raise ValueError(f"rows of shape {rows.shape} do not fit an array of {self.shape} "
                             f"holding {self.n} rows")
        self.entry.write(rows.tobytes())
        self.n += len(rows)


@contextmanager
def npz_rows(path: str | Path, shape: tuple[int, ...]) -> Iterator[_Rows]:
    """Yield a writer whose ``append`` adds uint8 rows to ``arr_0`` of ``shape``; the file moves
    into place when the block ends with every row written, and is never left half-written."""
    shape = tuple(int(s) for s in shape)
    header = {"descr": npformat.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
    with atomic_path(path) as temporary:
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED, allowZip64=True) as archive, \
                archive.open(f"{NPZ_ARRAY}.npy", "w", force_zip64=True) as entry:
            npformat.write_array_header_1_0(entry, header)
            rows = _Rows(entry, shape)
            yield rows
            if rows.n != shape[0]:
                raise ValueError(f"{path}: {rows.n} of {shape[0]} rows were written")

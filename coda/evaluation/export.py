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

from coda.files import atomic_path
from coda.pixels import RowWriter, write_npy_header

NPZ_ARRAY = "arr_0"


@contextmanager
def npz_rows(path: str | Path, shape: tuple[int, ...]) -> Iterator[RowWriter]:
    """Yield a writer whose ``append`` adds uint8 rows to ``arr_0`` of ``shape``; the file moves
    into place when the block ends with every row written, and is never left half-written."""
    shape = tuple(int(s) for s in shape)
    with atomic_path(path) as temporary:
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED, allowZip64=True) as archive, \
                archive.open(f"{NPZ_ARRAY}.npy", "w", force_zip64=True) as entry:
            write_npy_header(entry, shape)
            rows = RowWriter(entry, shape)
            yield rows
            if rows.n != shape[0]:
                raise ValueError(f"{path}: {rows.n} of {shape[0]} rows were written")

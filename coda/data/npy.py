"""Writing a large uint8 ``.npy`` row by row without holding it in memory.

``NpyRowWriter`` memory-maps a temporary ``.npy`` (``numpy.lib.format.open_memmap``) sized for the
largest possible number of rows, appends rows, and on ``close()`` shrinks it to the rows actually
written (rewriting the header in place -- numpy leaves room for that -- and truncating the file)
before ``os.replace`` moves it to its final name. An aborted write leaves no partial file behind.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

FLUSH_EVERY = 512


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}.partial.npy")


def shrink_npy(path, n_rows: int) -> None:
    """Keep only the first ``n_rows`` rows of the ``.npy`` at ``path``, in place."""
    path = Path(path)
    with open(path, "r+b") as fh:
        version = npformat.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = npformat.read_array_header_2_0(fh)
        offset = fh.tell()
        if fortran:
            raise ValueError("shrink_npy supports C-order arrays only")
        new_shape = (int(n_rows),) + tuple(shape[1:])
        header = {"descr": npformat.dtype_to_descr(dtype), "fortran_order": False,
                  "shape": new_shape}
        buf = io.BytesIO()
        if version == (1, 0):
            npformat.write_array_header_1_0(buf, header)
        else:
            npformat.write_array_header_2_0(buf, header)
        raw = buf.getvalue()
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        if len(raw) == offset:
            fh.seek(0)
            fh.write(raw)
            fh.truncate(offset + n_rows * row_bytes)
            return
    # Header length changed (not expected with numpy's growth padding): copy instead.
    src = np.load(path, mmap_mode="r")
    tmp = path.with_name(path.stem + ".shrink.npy")
    np.save(tmp, src[:n_rows])
    del src
    os.replace(tmp, path)


class NpyRowWriter:
    """Append uint8 rows of shape ``row_shape`` into ``path`` (at most ``capacity`` rows)."""

    def __init__(self, path, capacity: int, row_shape, dtype=np.uint8):
        if capacity < 1:
            raise ValueError("NpyRowWriter needs capacity >= 1")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _tmp_name(self.path)
        self.capacity = int(capacity)
        self.row_shape = tuple(int(s) for s in row_shape)
        self._arr = npformat.open_memmap(self.tmp, mode="w+", dtype=dtype,
                                         shape=(self.capacity,) + self.row_shape)
        self.n = 0

    def append(self, row) -> int:
        if self.n >= self.capacity:
            raise IndexError(f"{self.path}: more than {self.capacity} rows")
        row = np.asarray(row)
        if row.shape != self.row_shape:
            raise ValueError(f"row shape {row.shape} != {self.row_shape}")
        self._arr[self.n] = row
        self.n += 1
        if self.n % FLUSH_EVERY == 0:
            self._arr.flush()
        return self.n - 1

    def close(self) -> Path:
        """Finish: shrink to the rows written and move into place. Returns the final path."""
        self._arr.flush()
        del self._arr
        shrink_npy(self.tmp, self.n)
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if hasattr(self, "_arr"):
            del self._arr
        if self.tmp.exists():
            self.tmp.unlink()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False

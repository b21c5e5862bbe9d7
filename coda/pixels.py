"""The one place where images change representation, and the one reader and row writer of uint8
image arrays (``val.npy``, the demo's ``train.npy``, the evaluation's ``reconstructions.npz``).

Three ranges: uint8 0..255 (files, metrics), the models' floats in [-1, 1], and floats in [0, 1]
(the release-float FID protocol). A model's output goes to uint8 by rounding and clamping, as a
saved image would be.
"""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from numpy.lib import format as npformat

from .files import reading


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 (any shape) -> float32 in [-1, 1], the range the VAE and LPIPS expect."""
    return images.float() / 127.5 - 1


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Floats in [-1, 1] -> uint8 (round, clamp): what a saved reconstruction would be."""
    return ((images.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_zero_one(images: torch.Tensor) -> torch.Tensor:
    """Floats in [-1, 1] -> float32 in [0, 1], clamped, not rounded (the release's in-training FID input)."""
    return (images.float() * 0.5 + 0.5).clamp(0, 1)


def uint8_to_zero_one(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255


def array_to_tensor(image: np.ndarray) -> torch.Tensor:
    """One uint8 H x W x 3 array -> float32 3 x H x W in [-1, 1] (what every Dataset item is)."""
    return from_uint8(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))


def batch_to_uint8(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 rows (a slice of a memory map) -> a contiguous uint8 N x 3 x H x W tensor."""
    return torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).contiguous()


def read_image_array(path: str | Path, what: str = "uint8 image array") -> np.ndarray:
    """A uint8 N x H x W x 3 ``.npy``, memory-mapped (never read whole: ImageNet's val.npy is 9.8 GB)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path} (run the prepare stage)")
    with reading(path, what, "rerun the prepare stage"):
        images = np.load(path, mmap_mode="r")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: expected a uint8 N x H x W x 3 array, got {images.dtype} {images.shape}")
    return images


def write_npy_header(stream: BinaryIO, shape: tuple[int, ...]) -> None:
    """An .npy (version 1.0) header of a uint8 array of ``shape``. numpy pads it so that the first
    dimension can grow to 21 digits without changing its length."""
    npformat.write_array_header_1_0(stream, {"descr": "|u1", "fortran_order": False,
                                             "shape": tuple(int(s) for s in shape)})


class RowWriter:
    """Appends uint8 rows of ``shape[1:]`` to ``stream`` (after its .npy header), at most ``shape[0]``
    of them, so that an array is written batch by batch and never held whole."""

    def __init__(self, stream: BinaryIO, shape: tuple[int, ...]):
        self.stream, self.shape, self.n = stream, tuple(int(s) for s in shape), 0

    def append(self, rows: np.ndarray) -> int:
        """Add rows of shape (k, *shape[1:]); returns the index of the first."""
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        if rows.shape[1:] != self.shape[1:] or self.n + len(rows) > self.shape[0]:
            raise ValueError(f"rows of shape {rows.shape} do not fit an array of {self.shape} "
                             f"holding {self.n} rows")
        self.stream.write(rows.tobytes())
        self.n += len(rows)
        return self.n - len(rows)

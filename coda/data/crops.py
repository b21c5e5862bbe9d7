"""Crops from an RGB ``PIL.Image`` (as ``read_rgb`` returns) to a uint8 H x W x 3 numpy array:
``center_crop``, ``adm_crop`` and ``release_crop`` for the validation set, ``train_crop`` (seeded,
random) for training."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

TRAIN_RESIZE_RATIO = 1.125


def resize_short_side(img: Image.Image, short: int, resample=Image.LANCZOS) -> Image.Image:
    """Resize so the short side is ``short`` pixels, keeping the aspect ratio."""
    w, h = img.size
    scale = short / min(w, h)
    size = (max(short, round(w * scale)), max(short, round(h * scale)))
    if size == (w, h):
        return img
    return img.resize(size, resample=resample)


def _crop_at(img: Image.Image, left: int, top: int, res: int) -> np.ndarray:
    arr = np.asarray(img.crop((left, top, left + res, top + res)), dtype=np.uint8)
    assert arr.shape == (res, res, 3), arr.shape
    return np.ascontiguousarray(arr)


def _centre(img: Image.Image, res: int) -> np.ndarray:
    w, h = img.size
    return _crop_at(img, (w - res) // 2, (h - res) // 2, res)


def center_crop(img: Image.Image, res: int) -> np.ndarray:
    """Resize the short side to ``res`` with Lanczos, then take the centre ``res`` x ``res``."""
    return _centre(resize_short_side(img, res, Image.LANCZOS), res)


def adm_crop(img: Image.Image, res: int) -> np.ndarray:
    """ADM ``center_crop_arr``: BOX-halve while min side >= 2*res, bicubic to short side res, crop."""
    while min(img.size) >= 2 * res:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = res / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    return _centre(img, res)


def train_crop(img: Image.Image, res: int, rng: np.random.Generator) -> np.ndarray:
    """Lanczos resize of the short side to round(1.125 * res), random ``res`` crop (no flip)."""
    img = resize_short_side(img, round(TRAIN_RESIZE_RATIO * res), Image.LANCZOS)
    w, h = img.size
    left = int(rng.integers(0, w - res + 1))
    top = int(rng.integers(0, h - res + 1))
    return _crop_at(img, left, top, res)


def release_crop(img: Image.Image, res: int) -> np.ndarray:
    """The release's evaluation crop: its training transform (``train_crop``) on the validation image.
    The release draws a new crop at every evaluation; here each image's crop is seeded by its pixels,
    so the prepared validation set stays one fixed set of images, whatever the order or threads."""
    seed = int.from_bytes(hashlib.sha256(img.tobytes()).digest()[:8], "little")
    return train_crop(img, res, np.random.default_rng(seed))


CROPS = {"center": center_crop, "adm": adm_crop, "release": release_crop}


def get_crop(name: str):
    if name not in CROPS:
        raise ValueError(f"unknown crop {name!r}: expected one of {sorted(CROPS)}")
    return CROPS[name]

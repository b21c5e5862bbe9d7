"""Any image into the tokenizer's square and back: the ``FIT_POLICIES`` of `coda reconstruct / encode`.

- ``resize-crop`` (default): the validation ``center`` crop (``coda.data.crops.center_crop``): Lanczos
  resize of the short side to ``res``, then the centre ``res`` x ``res``; the output is that square.
- ``pad``: Lanczos resize of the long side to ``res`` (up or down), then edge-replicated padding to
  ``res`` x ``res``, centred (edges rather than a constant, so the VAE sees no false border). The
  padding is removed after decoding: the output is the whole picture, long side ``res``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .crops import center_crop

FIT_POLICIES = ("resize-crop", "pad")


@dataclass(frozen=True)
class Framing:
    """How a picture sits in the tokenizer's square: ``padding`` (left, top, right, bottom) in pixels."""

    policy: str
    original_size: tuple[int, int]  # (width, height) as read, after EXIF orientation
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)

    def unframe(self, image: np.ndarray) -> np.ndarray:
        """H x W x 3 at the tokenizer's resolution -> the picture without its padding."""
        left, top, right, bottom = self.padding
        return image[top:image.shape[0] - bottom, left:image.shape[1] - right]


def fit_to_square(img: Image.Image, resolution: int, policy: str) -> tuple[np.ndarray, Framing]:
    """An RGB image -> uint8 ``resolution`` x ``resolution`` x 3 and its framing, by ``policy``."""
    if policy == "resize-crop":
        return center_crop(img, resolution), Framing(policy, img.size)
    if policy != "pad":
        raise ValueError(f"policy must be one of {FIT_POLICIES}, got {policy!r}")
    width, height = img.size
    scale = resolution / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    picture = np.asarray(img if size == img.size else img.resize(size, resample=Image.LANCZOS), dtype=np.uint8)
    left, top = (resolution - size[0]) // 2, (resolution - size[1]) // 2
    padding = (left, top, resolution - size[0] - left, resolution - size[1] - top)
    padded = np.pad(picture, ((top, padding[3]), (left, padding[2]), (0, 0)), mode="edge")
    return padded, Framing(policy, img.size, padding)

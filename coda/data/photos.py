"""The real photographs bundled in installed packages (environment.md), for the demo scale.

Nothing here downloads: each loader reads a file shipped inside scikit-image, scikit-learn or
matplotlib. A photo that cannot be loaded raises ``BadImage("unavailable", ...)``.
Greyscale photos (camera and the brick/grass/gravel textures) are repeated into three channels.
"""

from __future__ import annotations

import functools

import numpy as np

from .images import BadImage


def _skimage(name: str):
    def load():
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _motorcycle(index: int):
    def load():
        import skimage.data

        return skimage.data.stereo_motorcycle()[index]

    return load


def _sklearn(filename: str):
    def load():
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


def _matplotlib(filename: str):
    def load():
        from matplotlib import cbook
        from PIL import Image

        with Image.open(cbook.get_sample_data(filename, asfileobj=False)) as img:
            return np.asarray(img.convert("RGB"))

    return load


# name -> (package, loader). Order is fixed; it is the order of the demo arrays.
PHOTOS = {
    "astronaut": ("scikit-image", _skimage("astronaut")),
    "chelsea": ("scikit-image", _skimage("chelsea")),
    "coffee": ("scikit-image", _skimage("coffee")),
    "rocket": ("scikit-image", _skimage("rocket")),
    "hubble_deep_field": ("scikit-image", _skimage("hubble_deep_field")),
    "retina": ("scikit-image", _skimage("retina")),
    "immunohistochemistry": ("scikit-image", _skimage("immunohistochemistry")),
    "brick": ("scikit-image", _skimage("brick")),
    "grass": ("scikit-image", _skimage("grass")),
    "gravel": ("scikit-image", _skimage("gravel")),
    "motorcycle_left": ("scikit-image", _motorcycle(0)),
    "motorcycle_right": ("scikit-image", _motorcycle(1)),
    "camera": ("scikit-image", _skimage("camera")),
    "china": ("scikit-learn", _sklearn("china.jpg")),
    "flower": ("scikit-learn", _sklearn("flower.jpg")),
    "grace_hopper": ("matplotlib", _matplotlib("grace_hopper.jpg")),
}

# The fixed validation photographs of the demo: a cat, a still life, a landscape with buildings and
# a portrait. Everything else is training data. (The two motorcycle views are near-duplicates and
# therefore stay together, in train.)
DEFAULT_VAL_PHOTOS = ("chelsea", "coffee", "china", "grace_hopper")


def _to_rgb_uint8(arr, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        rgb, alpha = arr[..., :3].astype(np.float32), arr[..., 3:].astype(np.float32) / 255.0
        arr = np.rint(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise BadImage("unavailable", name, f"unexpected array shape {arr.shape}")
    return np.ascontiguousarray(arr)


def load_photo(name: str) -> np.ndarray:
    """The bundled photo ``name`` as uint8 H x W x 3, or ``BadImage("unavailable", name)``."""
    if name not in PHOTOS:
        raise ValueError(f"unknown demo photo {name!r}: expected one of {sorted(PHOTOS)}")
    package, loader = PHOTOS[name]
    try:
        return _load_cached(loader, name)
    except BadImage:
        raise
    except Exception as exc:  # missing optional download, package not installed, ...  # noqa: BLE001
        raise BadImage("unavailable", name, f"{package}: {type(exc).__name__}: {exc}") from None


@functools.lru_cache(maxsize=len(PHOTOS) + 4)
def _load_cached(loader, name: str) -> np.ndarray:
    """Photos are small (about 15 MB together); keep them for repeated runs. Read-only."""
    arr = np.array(_to_rgb_uint8(loader(), name))  # own copy: the flag must not touch the source
    arr.setflags(write=False)
    return arr


def available_photos() -> list[str]:
    """Names of the bundled photos that load offline in this environment."""
    out = []
    for name in PHOTOS:
        try:
            load_photo(name)
        except BadImage:
            continue
        out.append(name)
    return out

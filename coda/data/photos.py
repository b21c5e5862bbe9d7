"""The real photographs bundled in installed packages, for the demo scale.

Nothing here downloads: each loader reads a file shipped inside scikit-image, scikit-learn or
matplotlib. A photo that cannot be loaded raises ``BadImage("unavailable", ...)``.
Greyscale photos (camera and the brick/grass/gravel textures) are repeated into three channels.
"""

from __future__ import annotations

from functools import lru_cache, partial

import numpy as np

from .bad_images import BadImage


def _skimage(name: str, view: int | None = None):
    import skimage.data

    photo = getattr(skimage.data, name)()
    return photo if view is None else photo[view]


def _sklearn(filename: str):
    from sklearn.datasets import load_sample_image

    return load_sample_image(filename)


def _matplotlib(filename: str):
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data(filename, asfileobj=False)) as img:
        return np.asarray(img.convert("RGB"))


# name -> (package, loader). Order is fixed; it is the order of the demo arrays.
PHOTOS = {
    **{name: ("scikit-image", partial(_skimage, name)) for name in (
        "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina",
        "immunohistochemistry", "brick", "grass", "gravel")},
    "motorcycle_left": ("scikit-image", partial(_skimage, "stereo_motorcycle", 0)),
    "motorcycle_right": ("scikit-image", partial(_skimage, "stereo_motorcycle", 1)),
    "camera": ("scikit-image", partial(_skimage, "camera")),
    "china": ("scikit-learn", partial(_sklearn, "china.jpg")),
    "flower": ("scikit-learn", partial(_sklearn, "flower.jpg")),
    "grace_hopper": ("matplotlib", partial(_matplotlib, "grace_hopper.jpg")),
}

# The fixed validation photographs of the demo: a cat, a still life, a landscape with buildings and
# a portrait. Everything else is training data. (The two motorcycle views are near-duplicates and
# therefore stay together, in train.)
VAL_PHOTOS = ("chelsea", "coffee", "china", "grace_hopper")


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


@lru_cache(maxsize=len(PHOTOS) + 4)
def _load_cached(loader, name: str) -> np.ndarray:
    """Photos are small (about 15 MB together); keep them for repeated runs. Read-only."""
    arr = np.asarray(loader())
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise BadImage("unavailable", name, f"expected uint8 RGB or grey, got {arr.dtype} {arr.shape}")
    arr = np.array(arr)  # own copy: the flag must not touch the source
    arr.setflags(write=False)
    return arr

"""Data preparation: image reading, crops, manifests, demo photo crops, bad-file reports.

Modules (one job each):
- ``images``: ``read_rgb`` / ``open_rgb`` / ``probe_image`` (file -> RGB or ``BadImage``),
  ``find_images`` / ``list_files``.
- ``transforms``: ``center_crop``, ``adm_crop``, ``train_crop``, ``CROPS``.
- ``report``: ``BadImageReport``, the ``on_bad_image`` policy, ``BadImageError``.
- ``npy``: ``NpyRowWriter`` (memory-mapped, incremental uint8 .npy).
- ``photos``: the real photographs bundled in scikit-image / scikit-learn / matplotlib.
- ``prepare``: ``prepare_folder`` (paper scale) and ``prepare_demo`` (from ``demo``).
- ``datasets``: torch Datasets (``ArrayImages``, ``ManifestImages``, ``train_dataset``).
"""

from .images import BadImage, find_images, read_rgb
from .prepare import prepare_demo, prepare_folder
from .report import BadImageError, BadImageReport
from .transforms import CROPS, adm_crop, center_crop, train_crop

__all__ = [
    "BadImage", "BadImageError", "BadImageReport", "CROPS", "adm_crop", "center_crop",
    "find_images", "prepare_demo", "prepare_folder", "read_rgb", "train_crop",
]

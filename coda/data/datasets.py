"""torch Datasets over a prepared folder; every item is a float tensor C x H x W in [-1, 1]."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..artifacts import META, TRAIN_FILES, TRAIN_MANIFEST, TRAIN_NPY, VAL_FILES
from ..pixels import array_to_tensor, read_image_array
from .bad_images import BadImage
from .crops import train_crop
from .images import read_rgb
from .layout import read_tsv

MAX_RETRIES = 50


class ArrayImages(Dataset):
    """A uint8 N x H x W x 3 ``.npy`` (val.npy, the demo's train.npy), memory-mapped and opened lazily,
    so DataLoader workers each map the file instead of copying it."""

    def __init__(self, npy_path):
        self.path = Path(npy_path)
        self.shape = tuple(read_image_array(self.path).shape)
        self._arr = None  # opened lazily in each process

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._arr is None:
            self._arr = read_image_array(self.path)
        return array_to_tensor(np.array(self._arr[index]))

    def __getstate__(self):
        return {**self.__dict__, "_arr": None}


class ManifestImages(Dataset):
    """``train_manifest.tsv``'s files (relative to ``root``) via ``read_rgb`` and ``train_crop``, seeded by
    (seed, epoch, index): call ``set_epoch`` once per epoch for fresh crops. A file that turns out bad
    at train time is skipped with a warning by deterministically drawing another index."""

    def __init__(self, manifest, root, resolution: int, seed: int = 0, min_size=None):
        self.manifest, self.root = Path(manifest), Path(root)
        if not self.manifest.exists():
            raise FileNotFoundError(f"train manifest not found: {self.manifest}")
        rows = read_tsv(self.manifest)
        if not rows:
            raise ValueError(f"train manifest {self.manifest} lists no images")
        self.paths = [r["path"] for r in rows]
        self.resolution, self.seed, self.min_size = int(resolution), int(seed), min_size
        self.epoch = 0
        self._bad: set[int] = set()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        i = int(index)
        for attempt in range(MAX_RETRIES):
            rng = np.random.default_rng([self.seed, self.epoch, int(index), attempt])
            if i not in self._bad:
                try:
                    img = read_rgb(self.root / self.paths[i], self.min_size)
                    return array_to_tensor(train_crop(img, self.resolution, rng))
                except BadImage as exc:
                    self._bad.add(i)
                    warnings.warn(f"skipping bad training image {exc} (drawing another)",
                                  RuntimeWarning, stacklevel=2)
            i = int(rng.integers(len(self.paths)))
        raise RuntimeError(f"{MAX_RETRIES} bad training images in a row starting at index {index} "
                           f"of {self.manifest}; check the data (see prepare_report.json)")


def read_meta(prepared_dir) -> dict:
    path = Path(prepared_dir) / META
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {prepared_dir} is not a prepared data folder "
                                f"(run the prepare stage first)")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def train_dataset(prepared_dir, resolution: int | None = None, seed: int = 0) -> Dataset:
    """The training set of a prepared folder: ``train.npy`` if present, else the manifest of the
    files under meta.json's ``train_dir``. ``resolution=None``: the prepared resolution (with
    ``train.npy`` it must be the stored crops')."""
    prepared_dir = Path(prepared_dir)
    meta = read_meta(prepared_dir)
    resolution = int(meta["resolution"] if resolution is None else resolution)
    npy = prepared_dir / TRAIN_NPY
    if npy.exists():
        ds = ArrayImages(npy)
        if ds.shape[1] != resolution or ds.shape[2] != resolution:
            raise ValueError(f"{npy} holds {ds.shape[1]}x{ds.shape[2]} crops but resolution "
                             f"{resolution} was asked for; re-run prepare at that resolution")
        return ds
    if "train_dir" not in meta:
        raise ValueError(f"{prepared_dir / META} has no train_dir for {prepared_dir / TRAIN_MANIFEST}")
    return ManifestImages(prepared_dir / TRAIN_MANIFEST, meta["train_dir"], resolution, seed=seed,
                          min_size=meta.get("min_size"))



NO_CLASS = -1  # the label of an item whose class is none of the training classes (a demo val photo)


def class_labels(prepared_dir) -> tuple[list[str], dict[str, np.ndarray]]:
    """The classes of a prepared folder, in label order, and each split's labels (int64, row order
    of ``train_dataset`` and ``val.npy``).

    A folder dataset: the first subfolder, in sorted order (meta.json's ``classes``; ImageNet: the
    1,000 sorted synsets; a folder without subfolders: one class ""). The demo: the source
    photograph of each crop, in the order of meta.json's ``train_photos``; a val crop comes from a
    photo no training crop shows, so its label is ``NO_CLASS``."""
    prepared_dir = Path(prepared_dir)
    meta = read_meta(prepared_dir)
    if "classes" in meta:
        classes = list(meta["classes"])
        train = [int(row["label"]) for row in read_tsv(prepared_dir / TRAIN_MANIFEST)]
        column = "class"
    else:
        classes = [photo["name"] for photo in meta["train_photos"]]
        train = [classes.index(row["photo"]) for row in read_tsv(prepared_dir / TRAIN_FILES)]
        column = "photo"
    index = {name: i for i, name in enumerate(classes)}
    val = [index.get(row[column], NO_CLASS) for row in read_tsv(prepared_dir / VAL_FILES)]
    return classes, {"train": np.array(train, dtype=np.int64), "val": np.array(val, dtype=np.int64)}

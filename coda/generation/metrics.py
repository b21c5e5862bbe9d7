"""What decoded samples are worth: the demo-scale measures on VGG16 features (KID against four
baselines, class consistency, nearest-neighbour memorisation), the paper-scale gFID against ADM's
reference statistics, and ``results/generation.csv``.

Every measure takes features (N x D tensors), so the extractor is a parameter: ``vgg16_features``
(the project's offline VGG16 relu5_3, the rFD-VGG16 extractor) at demo scale, torch-fidelity's
Inception-v3 (``inception-v3-compat``, 2048 pool features) for gFID. Image sets are uint8
B x 3 x H x W tensors, as torch-fidelity's extractors take them.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..files import write_text
from .evaluate import unigram_counts

Features = Callable[[Tensor], Tensor]  # uint8 B x 3 x H x W -> float B x D

# torch-fidelity's KID defaults (100 subsets of 1000) unless the sets are smaller
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
NEAREST_PERCENTILE = 5.0
INCEPTION_DIM = 2048


# ---------------------------------------------------------------- features


def extract(features: Features, images: Tensor, batch_size: int = 32) -> Tensor:
    """``features`` over uint8 images in batches, float32 on the CPU."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 B x 3 x H x W images, got {images.dtype} {tuple(images.shape)}")
    with torch.no_grad():
        return torch.cat([features(images[i:i + batch_size]).float().flatten(1).cpu()
                          for i in range(0, len(images), batch_size)])


def vgg16_features(device: str | torch.device = "cpu") -> Features:
    """The offline VGG16 relu5_3 extractor (spatially averaged, 512 features) of rFD-VGG16
    (``coda.evaluation.vgg16``): converted LPIPS weights, no download."""
    from coda.evaluation.frechet import build_extractor
    from coda.evaluation.vgg16 import register_vgg16_extractor

    module = build_extractor(register_vgg16_extractor(), torch.device(device))
    return lambda images: module(images.to(device))[0]


# ---------------------------------------------------------------- KID and its baselines


def kid(features_a: Tensor, features_b: Tensor, *, subsets: int = KID_SUBSETS,
        subset_size: int = KID_SUBSET_SIZE, seed: int = 2020) -> dict:
    """Kernel distance (torch-fidelity's ``kid_features_to_metric``: unbiased MMD^2 with the cubic
    polynomial kernel (x.y / d + 1)^3, mean and std over random subsets). The subset size shrinks
    to the smaller set when it holds fewer than ``subset_size`` items (the demo's hundreds)."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    size = min(subset_size, len(features_a), len(features_b))
    if size < 2:
        raise ValueError(f"KID needs at least 2 items on each side, got {len(features_a)} and {len(features_b)}")
    out = kid_features_to_metric(features_a.double(), features_b.double(), kid_subsets=subsets,
                                 kid_subset_size=size, rng_seed=seed, verbose=False)
    return {"kid": out[KEY_METRIC_KID_MEAN], "kid_std": out[KEY_METRIC_KID_STD], "subset_size": size}


def kid_table(features: Features, real: Tensor, candidates: dict[str, Tensor], *, seed: int = 0,
              **kid_kwargs) -> dict[str, dict]:
    """KID of each image set against real crops, beside the floor of real against real.

    ``real`` is shuffled (``seed``) and split in two disjoint halves: the first is the reference of
    every row, the second is the ``real_vs_real`` row (what a perfect generator scores at this
    size). ``candidates``: name -> images, e.g. ``generated``, ``reconstructions`` (the tokenizer's
    ceiling), ``unigram`` and ``uniform`` (``unigram_tokens`` / ``uniform_tokens`` decoded: the
    floors a generator must beat)."""
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))
    half = len(real) // 2
    reference = extract(features, real[order[:half]])
    rows = {"real_vs_real": kid(reference, extract(features, real[order[half:]]), **kid_kwargs)}
    for name, images in candidates.items():
        rows[name] = kid(reference, extract(features, images), **kid_kwargs)
    return rows


def unigram_tokens(train: Dataset, scales, codebook_size: int, count: int,
                   generator: torch.Generator | None = None) -> list[Tensor]:
    """``count`` token maps (one count x s x s LongTensor per scale) drawn independently from each
    scale's code frequencies in the training tokens, add-one smoothed as ``unigram_bits`` scores them."""
    probabilities = unigram_counts(train, scales, codebook_size) + 1
    return [torch.multinomial(probabilities[k].float(), count * s * s, replacement=True, generator=generator)
            .view(count, s, s) for k, s in enumerate(scales)]


def uniform_tokens(scales, codebook_size: int, count: int, generator: torch.Generator | None = None) -> list[Tensor]:
    """``count`` token maps of independent uniformly random codes."""
    return [torch.randint(codebook_size, (count, s, s), generator=generator) for s in scales]


# ---------------------------------------------------------------- class consistency


def fit_class_probe(features: Tensor, labels: Tensor):
    """A nearest-centroid classifier (scikit-learn) on real crops' features, standardised: with a
    few dozen crops per class and 512 features there is nothing for a regularised model to tune."""
    from sklearn.neighbors import NearestCentroid
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = torch.as_tensor(labels)
    if len(torch.unique(labels)) < 2:
        raise ValueError("a class probe needs real crops of at least 2 classes")
    return make_pipeline(StandardScaler(), NearestCentroid()).fit(features.double().numpy(), labels.numpy())


def class_consistency(probe, features: Tensor, labels: Tensor) -> dict:
    """The share of samples of class c the probe assigns to c: over all samples, per class, and
    chance (one over the probe's classes)."""
    labels = torch.as_tensor(labels).numpy()
    hit = probe.predict(features.double().numpy()) == labels
    classes = probe[-1].classes_
    per_class = {int(c): float(hit[labels == c].mean()) for c in np.unique(labels)}
    return {"share": float(hit.mean()), "per_class": per_class, "chance": 1 / len(classes), "samples": len(hit)}


# ---------------------------------------------------------------- memorisation


def nearest_distances(queries: Tensor, train: Tensor, batch_size: int = 1024) -> Tensor:
    """Euclidean distance from each query to its nearest training item (features)."""
    train = train.double()
    return torch.cat([torch.cdist(queries[i:i + batch_size].double(), train).min(dim=1).values
                      for i in range(0, len(queries), batch_size)])


def nearest_neighbour_memorisation(samples: Tensor, train: Tensor, fresh_real: Tensor,
                                   percentile: float = NEAREST_PERCENTILE) -> dict:
    """How close samples sit to the training crops, against how close unseen real crops sit.

    The threshold is the ``percentile``-th percentile of fresh real crops' nearest-training
    distances; a generator that copies puts far more than ``percentile`` % of its samples below
    it. ``fresh_real`` must not hold training crops (their distance would be 0)."""
    if len(fresh_real) < 2:
        raise ValueError("nearest-neighbour memorisation needs at least 2 fresh real crops")
    real = nearest_distances(fresh_real, train)
    threshold = float(torch.quantile(real, percentile / 100))
    sampled = nearest_distances(samples, train)
    return {"share_below": float((sampled < threshold).double().mean()), "percentile": percentile,
            "threshold": threshold, "sample_median": float(sampled.median()), "real_median": float(real.median()),
            "samples": len(sampled), "fresh_real": len(real)}


# ---------------------------------------------------------------- paper-scale gFID


class ReferenceStatisticsError(ValueError):
    """The reference statistics file is not an ADM-style npz with ``mu`` and ``sigma``."""


def load_reference_statistics(path: str | Path, dim: int = INCEPTION_DIM) -> dict:
    """``mu`` (dim) and ``sigma`` (dim x dim) of an ADM-style reference npz (OpenAI's evaluator
    files, e.g. ``VIRTUAL_imagenet256_labeled.npz``), float64; refused with one line otherwise.
    Read without pickle."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceStatisticsError(f"{path}: reference statistics not found (fetch VIRTUAL_imagenet256_labeled.npz)")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in ("mu", "sigma") if key not in data.files]
            if missing:
                raise ReferenceStatisticsError(f"{path}: no {' or '.join(missing)} in the npz (it holds {sorted(data.files)}); "
                                     "expected an ADM reference batch with mu and sigma")
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    except (OSError, ValueError) as error:
        if isinstance(error, ReferenceStatisticsError):
            raise
        raise ReferenceStatisticsError(f"{path}: not a readable npz ({error})") from None
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ReferenceStatisticsError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not ({dim},) and ({dim}, {dim}): "
                             "not Inception pool features")
    return {"mu": mu, "sigma": sigma}


def feature_statistics(features: Tensor) -> dict:
    """Mean and unbiased covariance (numpy.cov's) in float64, as torch-fidelity and ADM compute them."""
    from coda.evaluation.frechet import FrechetStatistics

    statistics = FrechetStatistics()
    statistics.update(features)
    return statistics.result()


def gfid(features: Tensor, reference: dict) -> float:
    """FID of generated images' features against reference statistics (torch-fidelity's
    ``fid_statistics_to_metric``).

    For a number comparable to published gFIDs the features must be torch-fidelity's
    ``inception-v3-compat`` pool features (``inception_features``) of 50,000 uint8 samples (50 per
    class) and the reference ADM's ``VIRTUAL_imagenet256_labeled.npz``. Neither the official
    Inception weights nor that file are available offline here: the tests check the arithmetic on
    a fake reference and random features, and no paper-scale gFID has been computed by this code."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    return float(fid_statistics_to_metric(reference, feature_statistics(features), verbose=False)[KEY_METRIC_FID])


def inception_features(weights: str | Path | None = None, device: str | torch.device = "cpu") -> Features:
    """torch-fidelity's Inception-v3 (``inception-v3-compat``) 2048 pool features on uint8 images;
    the official weights from ``weights`` or torch-fidelity's cache, never random ones."""
    from coda.evaluation.frechet import inception_feature_set, resolve_inception_weights

    path, info = resolve_inception_weights(weights)
    if path is None:
        raise FileNotFoundError(info["missing_reason"])
    feature_set = inception_feature_set(path, info, torch.device(device), "torch-fidelity")
    return lambda images: feature_set(images)[0]


# ---------------------------------------------------------------- results/generation.csv

GENERATION_COLUMNS = ("method", "variant", "tokens_per_image", "images", "gfid", "inception_score",
                      "kid_vgg16", "class_consistency", "source")


def read_reported(path: str | Path) -> list[dict]:
    """The published rows (``references/generation_reported.csv``)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{column: row.get(column, "") for column in GENERATION_COLUMNS} for row in rows]


def write_generation_csv(path: str | Path, computed: list[dict], reported: list[dict]) -> Path:
    """Computed rows (source "computed here" unless they say otherwise) above the published ones;
    missing cells stay empty. Unknown columns are refused, so a typo does not vanish."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=GENERATION_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in computed:
        unknown = set(row) - set(GENERATION_COLUMNS)
        if unknown:
            raise ValueError(f"unknown generation.csv columns {sorted(unknown)}")
        writer.writerow({"source": "computed here", **{k: _cell(v) for k, v in row.items()}})
    for row in reported:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return write_text(path, buffer.getvalue())


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)

"""The reference side of every Frechet distance, computed once per validation set: its file.

The reference stage (``coda reference``) writes ``reference.safetensors``: per feature set the
float64 mean and covariance of the validation images' features, and in its metadata what produced
them (extractor, layer, weights sha256, FID protocol, image count) and the sha256 of ``val.npy``.
Every evaluation reads it instead of recomputing the same features, and refuses it, with one
line, when it was made from another validation set, other images or other weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from coda.errors import UserError
from coda.files import atomic_path, library_versions, reading

from .frechet import FeatureSet, FrechetStatistics

FORMAT = "coda-reference/1"
RERUN = "rerun the reference stage (`coda reference`, or let Snakemake/DVC rerun it)"


class StaleReferenceError(UserError, ValueError):
    """The reference file does not belong to this evaluation: another validation set, image count,
    feature extractor, weights or protocol."""


def save_reference(path: str | Path, statistics: dict[str, FrechetStatistics | None],
                   identities: dict[str, dict], reasons: dict[str, str | None], *, val_npy: str | Path,
                   val_sha256: str, count: int, resolution: int) -> Path:
    """Write the statistics (``None`` where a feature set is missing, with its reason)."""
    tensors, sets = {}, {}
    for name, stats in statistics.items():
        if stats is None or stats.count < 2:
            reason = reasons.get(name) or f"a Frechet distance needs at least 2 images, got {count}"
            sets[name] = {"missing_reason": reason}
            continue
        result = stats.result()
        tensors[f"{name}.mu"] = torch.from_numpy(np.ascontiguousarray(result["mu"]))
        tensors[f"{name}.sigma"] = torch.from_numpy(np.ascontiguousarray(result["sigma"]))
        sets[name] = {**identities[name], "count": stats.count}
    metadata = {"format": FORMAT, "validation_set": str(val_npy), "val_sha256": val_sha256,
                "num_images": str(count), "resolution": str(resolution), "feature_sets": json.dumps(sets),
                "library_versions": json.dumps(library_versions())}
    with atomic_path(path) as temporary:
        save_file(tensors, temporary, metadata=metadata)
    return Path(path)


def reference_metadata(path: str | Path) -> dict:
    """The file's description: format, val_sha256, num_images, resolution, feature_sets, ..."""
    with reading(path, "reference statistics file", RERUN), safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    if metadata.get("format") != FORMAT:
        raise StaleReferenceError(f"{path} is not a {FORMAT} file (format {metadata.get('format')!r}); {RERUN}")
    metadata["num_images"], metadata["resolution"] = int(metadata["num_images"]), int(metadata["resolution"])
    metadata["feature_sets"] = json.loads(metadata["feature_sets"])
    return metadata


def check_validation_set(path: str | Path, val_sha256: str, count: int) -> dict:
    """The file's metadata, once it is known to describe these ``count`` images of this val.npy."""
    metadata = reference_metadata(path)
    if metadata["val_sha256"] != val_sha256:
        raise StaleReferenceError(f"{path} was computed from another validation set (val.npy sha256 "
                                  f"{metadata['val_sha256'][:12]}..., this one {val_sha256[:12]}...); {RERUN}")
    if metadata["num_images"] != count:
        raise StaleReferenceError(f"{path} describes the first {metadata['num_images']} validation images, this "
                                  f"evaluation reads {count} (scales.<scale>.evaluate.max_images); {RERUN}")
    return metadata


def load_statistics(path: str | Path, metadata: dict, feature_set: FeatureSet) -> FrechetStatistics | None:
    """The stored statistics of ``feature_set``, refused when another extractor, weights file or
    protocol produced them; ``None`` when the file says why it has none."""
    stored = metadata["feature_sets"].get(feature_set.name)
    if stored is None or "missing_reason" in stored:
        why = stored["missing_reason"] if stored else "it has none"
        raise StaleReferenceError(f"{path} has no {feature_set.name} features ({why}), but this evaluation "
                                  f"computes them; {RERUN}")
    different = {key: (stored.get(key), value) for key, value in feature_set.identity.items()
                 if stored.get(key) != value}
    if different:
        what = ", ".join(f"{key} {old!r} there, {new!r} here" for key, (old, new) in different.items())
        raise StaleReferenceError(f"{path}: its {feature_set.name} features were made differently ({what}); {RERUN}")
    with reading(path, "reference statistics file", RERUN), safe_open(str(path), framework="pt") as f:
        mu, sigma = (f.get_tensor(f"{feature_set.name}.{key}").numpy() for key in ("mu", "sigma"))
    return FrechetStatistics.of(mu, sigma, stored["count"])

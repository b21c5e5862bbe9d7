"""Frechet distances (rFID, rFD-VGG16) and the Inception Score, from features streamed batch by batch.

Features go into float64 running sums (sum and sum of outer products), so memory does not grow with
the number of images; the distance itself is torch-fidelity's ``fid_statistics_to_metric`` and the
Inception Score its ``isc_features_to_metric``, the formulas behind published numbers. The reference
side of a distance depends only on the validation set: it is either computed in the same pass or
read from the file of the reference stage (``coda.evaluation.reference``), through the same
``FeatureSet.reference_features``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch_fidelity.defaults import DEFAULTS as FIDELITY_DEFAULTS
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.utils import create_feature_extractor

from coda.files import file_sha256
from coda.pixels import uint8_to_zero_one

INCEPTION_EXTRACTOR = "inception-v3-compat"
# torch-fidelity's release file; torch.hub names files <stem>-<first 8 hex digits of sha256>.
OFFICIAL_INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's release v0.2.0
INCEPTION_FILES = (OFFICIAL_INCEPTION_FILE, "pt_inception-2015-12-05-6726825d.pth")  # + pytorch-fid's name
OFFICIAL_INCEPTION_SHA256_PREFIX = "6726825d"
# How images reach the Inception network (docs/evaluation.md): torch-fidelity's protocol on the uint8
# images (the default), or the release's in-training one, pytorch-fid's input stage on float images.
FID_PROTOCOLS = ("torch-fidelity", "release-float")
INCEPTION_SCORE_SPLITS = FIDELITY_DEFAULTS["isc_splits"]  # 10


class FrechetStatistics:
    """Running mean and covariance of feature vectors (float64); or fixed ones read from a file."""

    def __init__(self):
        self.count, self.sum, self.outer, self.fixed = 0, None, None, None

    @classmethod
    def of(cls, mu, sigma, count: int) -> "FrechetStatistics":
        """Statistics computed elsewhere (the reference stage's file): numpy float64 mean and covariance."""
        statistics = cls()
        statistics.count, statistics.fixed = int(count), {"mu": mu, "sigma": sigma}
        return statistics

    def update(self, features: torch.Tensor) -> None:
        if self.fixed is not None:
            raise RuntimeError("these statistics were read from a file; they take no more features")
        features = features.detach().to("cpu", torch.float64).flatten(1)
        if self.sum is None:
            dim = features.shape[1]
            self.sum = torch.zeros(dim, dtype=torch.float64)
            self.outer = torch.zeros(dim, dim, dtype=torch.float64)
        self.count += features.shape[0]
        self.sum += features.sum(0)
        self.outer += features.T @ features

    def result(self) -> dict:
        """{"mu", "sigma"} as numpy float64; sigma is unbiased (N - 1), as numpy.cov computes it."""
        if self.fixed is not None:
            return self.fixed
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 images, got {self.count}")
        mu = self.sum / self.count
        sigma = (self.outer - self.count * torch.outer(mu, mu)) / (self.count - 1)
        return {"mu": mu.numpy(), "sigma": sigma.numpy()}


class FeatureSet:
    """One torch-fidelity feature extractor of a Frechet distance, and what identifies its features:
    ``identity`` (extractor, layer, weights sha256, protocol) is what a reference file must match.
    ``logits``: the extractor also gives Inception's unbiased logits, for the Inception Score."""

    def __init__(self, name: str, module: torch.nn.Module, device: torch.device, identity: dict,
                 logits: bool = False):
        self.name, self.module, self.device, self.identity, self.logits = name, module, device, identity, logits
        self.float_input = identity.get("fid_protocol") == "release-float"

    @torch.no_grad()
    def __call__(self, images_uint8: torch.Tensor, images_unit: torch.Tensor | None = None):
        """(Frechet features, IS logits or None) of B x 3 x H x W images. ``images_unit``: the same
        images as floats in [0, 1] before rounding, which the release-float protocol reads instead."""
        if self.float_input:
            unit = uint8_to_zero_one(images_uint8) if images_unit is None else images_unit
            outputs = _inception_on_float(self.module, unit.to(self.device))
        else:
            outputs = self.module(images_uint8.to(self.device))
        return outputs[0], (outputs[1] if self.logits else None)

    def reference_features(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """The features of validation images: the reference stage and the in-pass fallback both call this."""
        return self(images_uint8)[0]


def _inception_on_float(module: torch.nn.Module, images_unit: torch.Tensor):
    """torch-fidelity's Inception-v3 behind pytorch-fid's input stage, as the release's in-training
    evaluation feeds it: float images in [0, 1], bilinear resize to 299 (``F.interpolate``,
    align_corners=False), then 2x - 1. torch-fidelity's forward accepts only uint8 (and resizes them
    its own way), so its first convolution is handed the prepared input instead of what it computed
    from a 1 x 1 placeholder; every layer after it is torch-fidelity's own."""
    size = module.INPUT_IMAGE_SIZE
    prepared = 2 * F.interpolate(images_unit.to(module.feature_extractor_internal_dtype), size=(size, size),
                                 mode="bilinear", align_corners=False) - 1
    handle = module.Conv2d_1a_3x3.register_forward_pre_hook(lambda layer, args: (prepared,))
    try:
        placeholder = torch.zeros(len(prepared), 3, 1, 1, dtype=torch.uint8, device=prepared.device)
        return module(placeholder)
    finally:
        handle.remove()


class PairedFrechet:
    """A feature set + statistics of the references (computed in this pass, or given) and of the
    reconstructions; with Inception, the reconstructions' logits for the Inception Score too."""

    def __init__(self, features: FeatureSet, reference: FrechetStatistics | None = None):
        self.feature_set = features
        self.reference_given = reference is not None
        self.reference = reference if reference is not None else FrechetStatistics()
        self.reconstruction = FrechetStatistics()
        self.logits: list[torch.Tensor] = []

    def features(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return self.feature_set(images_uint8)[0]

    def update(self, reference_uint8: torch.Tensor, reconstruction_uint8: torch.Tensor,
               reconstruction_unit: torch.Tensor | None = None) -> None:
        if not self.reference_given:
            self.reference.update(self.feature_set.reference_features(reference_uint8))
        features, logits = self.feature_set(reconstruction_uint8, reconstruction_unit)
        self.reconstruction.update(features)
        if logits is not None:
            self.logits.append(logits.detach().to("cpu", torch.float32))

    def result(self, reconstruction: FrechetStatistics | None = None) -> float:
        """To the references: of ``self.reconstruction``, or of other reconstructions of the same
        images (the progressive decodes share the reference statistics)."""
        reconstruction = self.reconstruction if reconstruction is None else reconstruction
        distance = fid_statistics_to_metric(self.reference.result(), reconstruction.result(),
                                            verbose=False)
        return float(distance[KEY_METRIC_FID])

    def inception_score(self) -> tuple[float | None, float | None, str | None]:
        """(mean, std, missing reason) over the reconstructions: torch-fidelity's definition (10
        splits of its shuffled order, logits_unbiased). Keeps 1008 floats per image (4 KB)."""
        count = sum(len(chunk) for chunk in self.logits)
        if count < INCEPTION_SCORE_SPLITS:
            return None, None, f"the Inception Score needs at least {INCEPTION_SCORE_SPLITS} images, got {count}"
        score = isc_features_to_metric(torch.cat(self.logits), splits=INCEPTION_SCORE_SPLITS,
                                       shuffle=FIDELITY_DEFAULTS["samples_shuffle"],
                                       rng_seed=FIDELITY_DEFAULTS["rng_seed"])
        return score[KEY_METRIC_ISC_MEAN], score[KEY_METRIC_ISC_STD], None


def build_extractor(name: str, device: torch.device, weights_path: str | Path | None = None,
                    features: list[str] | None = None):
    """A torch-fidelity feature extractor (by default its FID layer only), on ``device``."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    features = features or [FEATURE_EXTRACTORS_REGISTRY[name].get_default_feature_layer_for_metric("fid")]
    kwargs = {"feature_extractor_weights_path": str(weights_path)} if weights_path else {}
    return create_feature_extractor(name, features, cuda=False, verbose=False, **kwargs).to(device)


def inception_feature_set(path: Path, info: dict, device: torch.device, fid_protocol: str) -> FeatureSet:
    """Pool features (2048) and unbiased logits (1008) of torch-fidelity's Inception-v3, one pass."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    registered = FEATURE_EXTRACTORS_REGISTRY[INCEPTION_EXTRACTOR]
    layers = [registered.get_default_feature_layer_for_metric(metric) for metric in ("fid", "isc")]
    module = build_extractor(INCEPTION_EXTRACTOR, device, path, features=layers)
    identity = {"extractor": INCEPTION_EXTRACTOR, "layer": layers[0], "weights_sha256": info["sha256"],
                "fid_protocol": fid_protocol}
    return FeatureSet("inception", module, device, identity, logits=True)


def resolve_inception_weights(path: str | Path | None) -> tuple[Path | None, dict]:
    """(weights file or None, description for the metrics file).

    A given path wins; otherwise torch-fidelity's own cache. Nothing is downloaded. The description
    says whether the file is the official one (its sha256 starts with the hash in the release name).
    """
    source = "given path"
    if path is None:
        # where torch-fidelity (torch.hub) keeps the file once downloaded; pytorch-fid's copy of the
        # same weights (same sha256 prefix) is accepted under its own name
        cached = [Path(torch.hub.get_dir()) / "checkpoints" / name for name in INCEPTION_FILES]
        path, source = next((p for p in cached if p.is_file()), None), "torch hub cache"
        if path is None:
            return None, {"missing_reason": (
                f"Inception-v3 weights not available offline: no evaluate.inception_weights given and "
                f"no {OFFICIAL_INCEPTION_FILE} in the torch hub cache ($TORCH_HOME/hub/checkpoints); rFID "
                f"needs the official weights and is never computed from random ones")}
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights file {path} not found")
    digest = file_sha256(path)
    official = digest.startswith(OFFICIAL_INCEPTION_SHA256_PREFIX)
    info = {"path": str(path), "source": source, "sha256": digest, "official": official}
    if not official:
        info["warning"] = ("these are NOT torch-fidelity's official Inception-v3 weights (sha256 does "
                           f"not start with {OFFICIAL_INCEPTION_SHA256_PREFIX}): the rFID is not "
                           "comparable to published numbers (random weights are for tests only)")
    return path, info

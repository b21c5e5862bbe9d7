"""Frechet distances (rFID, rFD-VGG16) from statistics streamed batch by batch.

Features go into float64 running sums (sum and sum of outer products), so memory does not grow with
the number of images; the distance itself is torch-fidelity's ``fid_statistics_to_metric``, the
formula behind published FIDs.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
from torch_fidelity.utils import create_feature_extractor

from coda.files import file_sha256

INCEPTION_EXTRACTOR = "inception-v3-compat"
# torch-fidelity's release file; torch.hub names files <stem>-<first 8 hex digits of sha256>.
OFFICIAL_INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's release v0.2.0
INCEPTION_FILES = (OFFICIAL_INCEPTION_FILE, "pt_inception-2015-12-05-6726825d.pth")  # + pytorch-fid's name
OFFICIAL_INCEPTION_SHA256_PREFIX = "6726825d"


class FrechetStatistics:
    """Running mean and covariance of feature vectors (float64)."""

    def __init__(self):
        self.count, self.sum, self.outer = 0, None, None

    def update(self, features: torch.Tensor) -> None:
        features = features.detach().to("cpu", torch.float64).flatten(1)
        if self.sum is None:
            dim = features.shape[1]
            self.sum = torch.zeros(dim, dtype=torch.float64)
            self.outer = torch.zeros(dim, dim, dtype=torch.float64)
        self.count += features.shape[0]
        self.sum += features.sum(0)
        self.outer += features.T @ features

    def statistics(self) -> dict:
        """{"mu", "sigma"} as numpy float64; sigma is unbiased (N - 1), as numpy.cov computes it."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 images, got {self.count}")
        mu = self.sum / self.count
        sigma = (self.outer - self.count * torch.outer(mu, mu)) / (self.count - 1)
        return {"mu": mu.numpy(), "sigma": sigma.numpy()}


class PairedFrechet:
    """Feature extractor + statistics of the references and of the reconstructions."""

    def __init__(self, extractor: torch.nn.Module, device: torch.device):
        self.extractor, self.device = extractor, device
        self.reference, self.reconstruction = FrechetStatistics(), FrechetStatistics()

    @torch.no_grad()
    def features(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return self.extractor(images_uint8.to(self.device))[0]

    def update(self, reference_uint8: torch.Tensor, reconstruction_uint8: torch.Tensor) -> None:
        self.reference.update(self.features(reference_uint8))
        self.reconstruction.update(self.features(reconstruction_uint8))

    def distance(self, reconstruction: FrechetStatistics | None = None) -> float:
        """To the references: of ``self.reconstruction``, or of other reconstructions of the same
        images (the progressive decodes share the reference statistics)."""
        reconstruction = self.reconstruction if reconstruction is None else reconstruction
        distance = fid_statistics_to_metric(self.reference.statistics(), reconstruction.statistics(),
                                            verbose=False)
        return float(distance[KEY_METRIC_FID])


def build_extractor(name: str, device: torch.device, weights_path: str | Path | None = None):
    """A torch-fidelity feature extractor with its default FID layer, on ``device``."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    layer = FEATURE_EXTRACTORS_REGISTRY[name].get_default_feature_layer_for_metric("fid")
    kwargs = {"feature_extractor_weights_path": str(weights_path)} if weights_path else {}
    return create_feature_extractor(name, [layer], cuda=False, verbose=False, **kwargs).to(device)


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



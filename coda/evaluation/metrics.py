"""Pure per-batch metrics on uint8 images and code-usage statistics.

Everything here is deterministic, has no model inside and is small enough to check by hand.
"""
from __future__ import annotations

import math

import torch
from skimage.metrics import structural_similarity

# PSNR of two identical images is infinite; a finite cap keeps averages and JSON numeric.
PSNR_CAP_DB = 100.0
# The release's SSIM: MATLAB-style (Wang et al.), Gaussian window 11, sigma 1.5, population covariances.
SSIM_WINDOW = 11
SSIM_IMPLEMENTATION = ("skimage.metrics.structural_similarity(data_range=255, channel_axis=-1, "
                       "gaussian_weights=True, sigma=1.5, use_sample_covariance=False): MATLAB-style "
                       "11x11 Gaussian window, on uint8 RGB, per image, averaged")


def psnr_uint8(reference: torch.Tensor, test: torch.Tensor, cap_db: float = PSNR_CAP_DB) -> torch.Tensor:
    """Per-image PSNR (dB) of uint8 B x 3 x H x W tensors, peak 255, capped at ``cap_db``."""
    mse = (reference.double() - test.double()).pow(2).flatten(1).mean(1)
    psnr = 10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-30))
    return psnr.clamp(max=cap_db)


def ssim_uint8(reference: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of uint8 B x 3 x H x W tensors (see ``SSIM_IMPLEMENTATION``), at least 11 px a side."""
    ref = reference.permute(0, 2, 3, 1).cpu().numpy()
    tst = test.permute(0, 2, 3, 1).cpu().numpy()
    return torch.tensor([structural_similarity(a, b, data_range=255, channel_axis=-1, gaussian_weights=True,
                                               sigma=1.5, use_sample_covariance=False)
                         for a, b in zip(ref, tst)], dtype=torch.float64)


class CodeUsage:
    """Exact histograms of code indices, per scale and pooled over scales, of a code with ``scales``
    (side lengths) and ``codebook_size`` codes; a model without codes (no scales) has no statistics."""

    def __init__(self, codebook_size: int | None, scales):
        self.codebook_size, self.scales = codebook_size, list(scales)
        self.counts = torch.zeros(len(self.scales), codebook_size or 0, dtype=torch.int64)

    def update(self, indices: list[torch.Tensor]) -> None:
        if len(indices) != self.counts.shape[0]:
            raise ValueError(f"expected {self.counts.shape[0]} scales, got {len(indices)}")
        for scale, idx in enumerate(indices):
            flat = idx.detach().reshape(-1).long().cpu()
            if flat.numel() and (flat.min() < 0 or flat.max() >= self.codebook_size):
                raise ValueError(f"code index outside [0, {self.codebook_size}) at scale {scale}")
            self.counts[scale] += torch.bincount(flat, minlength=self.codebook_size)

    @property
    def pooled(self) -> torch.Tensor:
        return self.counts.sum(0)

    def result(self) -> dict:
        """The evaluation record's code fields (all None without codes: the continuous VAE)."""
        if not self.scales:
            return dict.fromkeys(CODE_FIELDS)
        indices = sum(s * s for s in self.scales)
        return {
            "codebook_size": self.codebook_size, "scales": self.scales, "indices_per_image": indices,
            "bits_per_image": bits_per_image(indices, self.codebook_size),
            "codebook_utilization": utilization(self.pooled),
            "utilization_per_scale": [utilization(c) for c in self.counts],
            "code_perplexity": perplexity(self.pooled),
            "code_perplexity_per_scale": [perplexity(c) for c in self.counts],
        }


def utilization(counts: torch.Tensor) -> float:
    """Fraction of the codebook used at least once."""
    return int((counts > 0).sum()) / counts.numel()


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the empirical code distribution (nats); 0 when nothing was counted."""
    total = int(counts.sum())
    if total == 0:
        return 0.0
    p = counts[counts > 0].double() / total
    return float(torch.exp(-(p * p.log()).sum()))


def bits_per_image(indices_per_image: int, codebook_size: int) -> float:
    return indices_per_image * math.log2(codebook_size)


CODE_FIELDS = ("codebook_size", "scales", "indices_per_image", "bits_per_image", "codebook_utilization",
               "utilization_per_scale", "code_perplexity", "code_perplexity_per_scale")


class RunningMean:
    """Mean of per-image values, accumulated batch by batch in float64."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def update(self, values: torch.Tensor) -> None:
        self.total += float(values.double().sum())
        self.count += values.numel()

    def result(self) -> float | None:
        return self.total / self.count if self.count else None


def colour_error_uint8(reference: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Per image and channel, |mean colour of output - mean colour of reference| in 0-255 units
    (B x 3): a colour cast that PSNR spreads over every pixel shows here undiluted."""
    return (reference.double().mean((2, 3)) - output.double().mean((2, 3))).abs()

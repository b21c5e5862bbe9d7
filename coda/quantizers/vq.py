"""Single-scale nearest-neighbour VQ on the latent (ablation step 1 of docs/method.md section 6)."""

from __future__ import annotations

from .multiscale import check_int, check_scales
from .rvq import ResidualVQ


class VectorQuantizer(ResidualVQ):
    """ResidualVQ with the one scale (latent_size,): a plain VQ with the same loss form."""

    kind = "vq"
    settings = ("codebook_size", "dim", "beta", "latent_size")

    def __init__(self, codebook_size: int, dim: int = 16, latent_size: int = 16, beta: float = 0.05):
        check_int("latent_size", latent_size, 1)
        super().__init__(codebook_size, dim=dim, scales=(latent_size,), beta=beta)

    @classmethod
    def from_settings(cls, scales=None, **settings) -> "VectorQuantizer":
        """An experiment's block holds the ladder's ``scales``: plain VQ quantizes the last one alone."""
        if scales is not None:
            settings["latent_size"] = check_scales(scales)[-1]
        return super().from_settings(**settings)

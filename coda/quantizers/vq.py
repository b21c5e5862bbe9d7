"""Single-scale nearest-neighbour VQ on the latent (ablation step 1 of method.md section 6)."""

from __future__ import annotations

from .multiscale import check_int
from .rvq import ResidualVQ


class VectorQuantizer(ResidualVQ):
    """ResidualVQ with the one scale (latent_size,): a plain VQ with the same loss form."""

    kind = "vq"

    def __init__(self, codebook_size: int, dim: int = 16, latent_size: int = 16, beta: float = 0.05):
        check_int("latent_size", latent_size, 1)
        super().__init__(codebook_size, dim=dim, scales=(latent_size,), beta=beta)

    @property
    def config(self) -> dict:
        config = {k: v for k, v in super().config.items() if k != "scales"}
        return {**config, "latent_size": self.latent_size}

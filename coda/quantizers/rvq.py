"""Multi-scale residual VQ with a plain nearest-neighbour lookup (ablation step 2 of docs/method.md section 6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .multiscale import MultiScaleQuantizer, QuantizerOutput, ScaleLookup, residual_quantize

SEARCH_CHUNK_ELEMENTS = 1 << 22  # rows x codebook per distance block (16 MB fp32)


@torch.no_grad()
def nearest_code(rows: Tensor, codebook: Tensor) -> Tensor:
    """Index of the L2-nearest codebook row for each row (||e||^2 - 2 <r, e>; ||r||^2 is constant per row)."""
    code_sq = codebook.pow(2).sum(dim=1)
    step = max(1, SEARCH_CHUNK_ELEMENTS // codebook.shape[0])  # bounded memory at large N x V
    return torch.cat([
        torch.addmm(code_sq, rows[start:start + step], codebook.T, alpha=-2.0).argmin(dim=1)
        for start in range(0, rows.shape[0], step)
    ])


def nearest_neighbour_lookup(residual: Tensor, codebook: Tensor, beta: float) -> ScaleLookup:
    indices = nearest_code(residual, codebook)
    code = F.embedding(indices, codebook)
    # straight-through whose forward value is exactly `code` (r - sg(r) == 0), so decode matches bitwise
    z_q = code.detach() + (residual - residual.detach())
    vq_loss = F.mse_loss(code.detach(), residual) + beta * F.mse_loss(code, residual.detach())
    return ScaleLookup(z_q, indices, vq_loss, residual.new_zeros(()))


class ResidualVQ(MultiScaleQuantizer):
    kind = "rvq"
    settings = ("codebook_size", "dim", "scales", "beta")
    ignored = ("attn_dim", "entropy_temperature", "rms_eps")  # the attention lookup's

    def forward(self, z: Tensor) -> QuantizerOutput:
        with torch.autocast(z.device.type, enabled=False):
            codebook = self.code_values()

            def lookup(residual: Tensor) -> ScaleLookup:
                return nearest_neighbour_lookup(residual, codebook, self.beta)

            return residual_quantize(z.float(), self.scales, self.dim, lookup)

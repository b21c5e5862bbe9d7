"""CODA quantizer: multi-scale residual quantization with an attention lookup on one shared codebook."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention_lookup import attention_lookup
from .multiscale import (F16_SCALES, MultiScaleQuantizer, QuantizerOutput, ScaleLookup, check_float, check_int,
                         residual_quantize)


def _linear(layer: nn.Linear, x: Tensor) -> Tensor:
    return F.linear(x, layer.weight.float(), layer.bias.float())


def _rms_norm(norm: nn.RMSNorm, x: Tensor) -> Tensor:
    return F.rms_norm(x, norm.normalized_shape, norm.weight.float(), norm.eps)


class AttentionProjections(nn.Module):
    """q/k/v projections with RMSNorm on q and k; names follow the released checkpoint (`attn.*`)."""

    def __init__(self, dim: int, attn_dim: int, rms_eps: float):
        super().__init__()
        self.to_q = nn.Linear(dim, attn_dim)
        self.to_k = nn.Linear(dim, attn_dim)
        self.to_v = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(attn_dim, eps=rms_eps)
        self.norm_k = nn.RMSNorm(attn_dim, eps=rms_eps)

    def queries(self, rows: Tensor) -> Tensor:
        return _rms_norm(self.norm_q, _linear(self.to_q, rows))

    def keys(self, codebook: Tensor) -> Tensor:
        return _rms_norm(self.norm_k, _linear(self.to_k, codebook))

    def values(self, codebook: Tensor) -> Tensor:
        return _linear(self.to_v, codebook)


class CodaQuantizer(MultiScaleQuantizer):
    kind = "coda"
    settings = ("codebook_size", "dim", "attn_dim", "scales", "beta", "entropy_temperature", "rms_eps")

    def __init__(self, codebook_size: int = 16384, dim: int = 16, attn_dim: int = 32, scales=F16_SCALES,
                 beta: float = 0.05, entropy_temperature: float = 0.01, rms_eps: float = 1e-5):
        super().__init__(codebook_size, dim, scales, beta)
        self.attn_dim = check_int("attn_dim", attn_dim, 1)
        self.entropy_temperature = check_float("entropy_temperature", entropy_temperature, 0.0, strict=True)
        self.rms_eps = check_float("rms_eps", rms_eps, 0.0, strict=True)
        self.attn = AttentionProjections(self.dim, self.attn_dim, self.rms_eps)

    def code_values(self) -> Tensor:
        """V = to_v(codebook): what the decoder receives for each code (fp32)."""
        with torch.autocast(self.codebooks.weight.device.type, enabled=False):
            return self.attn.values(self.codebooks.weight.float())

    def forward(self, z: Tensor) -> QuantizerOutput:
        with torch.autocast(z.device.type, enabled=False):
            codebook = self.codebooks.weight.float()
            # keys and values depend only on the codebook: project once, share across scales
            keys = self.attn.keys(codebook)
            values = self.attn.values(codebook)
            logit_scale = 1.0 / math.sqrt(self.attn_dim)

            def lookup(residual: Tensor) -> ScaleLookup:
                queries = self.attn.queries(residual)
                z_q, indices, entropy = attention_lookup(queries, keys, values, logit_scale, self.entropy_temperature)
                z_q_hard = F.embedding(indices, values)  # same values, gradient only to V
                vq_loss = (F.mse_loss(z_q, residual) + F.mse_loss(z_q_hard.detach(), residual)
                           + self.beta * F.mse_loss(z_q_hard, residual.detach()))
                return ScaleLookup(z_q, indices, vq_loss, entropy)

            return residual_quantize(z.float(), self.scales, self.dim, lookup)

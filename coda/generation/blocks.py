"""The transformer blocks of the next-scale generator, after VAR's ``models/basic_var.py``
(FoundationVision/VAR, commit 78b9539): AdaLN self-attention blocks and the AdaLN before the head.

What VAR does and this module keeps:
- attention with l2-normalised queries and keys, the queries multiplied by a learnable per-head
  scale (stored as its log, initialised at log 4, clamped at log 100) and no 1/sqrt(d): VAR's
  author reports it keeps fp16/bf16 training stable (VAR issue #38);
- qkv from one matrix with learnable q and v biases and none for k;
- a key/value cache switched on the attention modules (``kv_caching``), so sampling runs one
  forward per scale over only that scale's tokens;
- AdaLN: the condition gives (gamma1, gamma2, scale1, scale2, shift1, shift2) in that order;
  layer norms have no affine parameters.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_LOG_SCALE = math.log(100.0)  # VAR's max_scale_mul
INITIAL_SCALE = 4.0  # VAR's scale_mul_1H11 init (before the log)


class DropPath(nn.Module):
    """Stochastic depth per sample (VAR: drop_path_rate 0.1 * depth / 24, linear over the blocks)."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        self.heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width), persistent=False)
        self.log_scale = nn.Parameter(torch.full((1, heads, 1, 1), INITIAL_SCALE).log())
        self.proj = nn.Linear(width, width)
        self.caching, self.cached_k, self.cached_v = False, None, None

    def kv_caching(self, enabled: bool) -> None:
        """Switch the cache on (empty) or off; each cached call appends its keys and values."""
        self.caching, self.cached_k, self.cached_v = enabled, None, None

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        batch, length, width = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).view(batch, length, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each B x heads x length x head_dim
        q = F.normalize(q, dim=-1).mul(self.log_scale.clamp_max(MAX_LOG_SCALE).exp())
        k = F.normalize(k, dim=-1)
        if self.caching:
            if self.cached_k is not None:
                k, v = torch.cat((self.cached_k, k), dim=2), torch.cat((self.cached_v, v), dim=2)
            self.cached_k, self.cached_v = k, v
        if mask is not None:
            mask = mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class AdaLNSelfAttention(nn.Module):
    """x += gamma1 * attn(LN(x)(1 + scale1) + shift1); x += gamma2 * ffn(LN(x)(1 + scale2) + shift2)."""

    def __init__(self, width: int, cond_dim: int, heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 drop_path: float = 0.0):
        super().__init__()
        self.width = width
        self.attn = SelfAttention(width, heads)
        self.ffn = FeedForward(width, round(width * mlp_ratio))
        self.norm = nn.LayerNorm(width, eps=norm_eps, elementwise_affine=False)
        self.ada = nn.Linear(cond_dim, 6 * width)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, cond: Tensor, mask: Tensor | None) -> Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada(F.silu(cond)).view(-1, 1, 6, self.width).unbind(2)
        x = x + self.drop_path(self.attn(self.norm(x).mul(scale1.add(1)).add_(shift1), mask).mul_(gamma1))
        return x + self.drop_path(self.ffn(self.norm(x).mul(scale2.add(1)).add_(shift2)).mul(gamma2))


class AdaLNBeforeHead(nn.Module):
    """LN(x)(1 + scale) + shift, (scale, shift) from the condition: what the output head sees."""

    def __init__(self, width: int, cond_dim: int, norm_eps: float = 1e-6):
        super().__init__()
        self.width = width
        self.norm = nn.LayerNorm(width, eps=norm_eps, elementwise_affine=False)
        self.ada = nn.Linear(cond_dim, 2 * width)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.ada(F.silu(cond)).view(-1, 1, 2, self.width).unbind(2)
        return self.norm(x).mul(scale.add(1)).add_(shift)

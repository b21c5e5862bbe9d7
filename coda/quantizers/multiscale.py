"""The multi-scale residual scheme shared by all quantizers (docs/method.md section 3), their common base
class, and setting checks."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

F16_SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # the paper's f16 setting (16 x 16 latent)


@dataclass
class QuantizerOutput:
    f_hat: Tensor  # B x C x H x W, the decoder input
    indices: list[Tensor]  # one LongTensor B x s x s per scale
    vq_loss: Tensor  # scalar
    entropy_loss: Tensor  # scalar (zero for nearest-neighbour kinds)


class ScaleLookup(NamedTuple):
    """What a quantizer's lookup returns for one scale (rows = positions)."""

    z_q: Tensor  # N x C, forward value is exactly the code value of `indices`
    indices: Tensor  # N
    vq_loss: Tensor
    entropy_loss: Tensor


# ---------------------------------------------------------------- resampling


def downsample(x: Tensor, side: int) -> Tensor:
    """Area (adaptive average) downsample to side x side."""
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    return F.interpolate(x, size=(side, side), mode="area")


def upsample(x: Tensor, side: int) -> Tensor:
    """Bicubic upsample to side x side (align_corners=False reproduces the reference)."""
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    return F.interpolate(x, size=(side, side), mode="bicubic", align_corners=False)


def map_to_rows(x: Tensor) -> Tensor:
    """B x C x s x s -> (B*s*s) x C."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def rows_to_map(rows: Tensor, batch: int, side: int) -> Tensor:
    """(B*s*s) x C -> B x C x s x s (contiguous, so both code paths resample the same layout)."""
    return rows.reshape(batch, side, side, -1).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------- residual loop


def _add_scale(f_hat: Tensor, z_q_rows: Tensor, side: int) -> tuple[Tensor, Tensor]:
    """Upsample one scale's codes and add them: the single code path of forward and decode."""
    up = upsample(rows_to_map(z_q_rows, f_hat.shape[0], side), f_hat.shape[-1])
    return f_hat + up, up


def check_latent(z: Tensor, scales: Sequence[int], channels: int) -> None:
    if z.dim() != 4 or z.shape[1] != channels:
        raise ValueError(f"expected a B x {channels} x H x W latent (dim={channels}), got shape {tuple(z.shape)}")
    if z.shape[-1] != scales[-1] or z.shape[-2] != scales[-1]:
        raise ValueError(f"latent size {tuple(z.shape[-2:])} does not match the quantizer: H and W must equal "
                         f"the last of scales {list(scales)} (= {scales[-1]})")


def residual_quantize(z: Tensor, scales: Sequence[int], channels: int,
                      lookup: Callable[[Tensor], ScaleLookup]) -> QuantizerOutput:
    """f_res = z; per scale: r = down(f_res), quantize, u = up(z_q), f_hat += u, f_res -= u."""
    check_latent(z, scales, channels)
    # Contiguous f_hat whatever z's strides (a posterior slice): the decoder's conv kernels, and so
    # its last bits, depend on the memory layout, and decode(indices) must equal reconstruct(x).
    f_res, f_hat = z, torch.zeros_like(z, memory_format=torch.contiguous_format)
    indices, vq_losses, entropy_losses = [], [], []
    for side in scales:
        step = lookup(map_to_rows(downsample(f_res, side)))
        f_hat, up = _add_scale(f_hat, step.z_q, side)
        f_res = f_res - up
        indices.append(step.indices.reshape(z.shape[0], side, side))
        vq_losses.append(step.vq_loss)
        entropy_losses.append(step.entropy_loss)
    return QuantizerOutput(f_hat, indices, torch.stack(vq_losses).mean(), torch.stack(entropy_losses).mean())


def residual_decode(indices: Sequence[Tensor], scales: Sequence[int], code_values: Tensor,
                    num_scales: int | None = None) -> Tensor:
    """Sum of the upsampled code values: bitwise the f_hat of residual_quantize.

    ``num_scales`` k sums only the first k scales (each is upsampled to the full latent, so this is
    the f_hat residual_quantize holds after k scales): the progressive, coarser decode. ``indices``
    then holds at least the first k maps."""
    k = len(scales) if num_scales is None else check_int("scales", num_scales, 1)
    if k > len(scales):
        raise ValueError(f"scales={k}: the quantizer has only {len(scales)} scales {list(scales)}")
    if not k <= len(indices) <= len(scales):
        expected = f"{len(scales)}" if k == len(scales) else f"{k} to {len(scales)}"
        raise ValueError(f"expected {expected} index maps (one per scale {list(scales)}), got {len(indices)}")
    batch, codebook_size = indices[0].shape[0], code_values.shape[0]
    used = list(zip(scales[:k], indices[:k]))
    for side, idx in used:
        if tuple(idx.shape) != (batch, side, side):
            raise ValueError(f"index map for scale {side} must be {batch} x {side} x {side}, got {tuple(idx.shape)}")
        if idx.numel() and (idx.min() < 0 or idx.max() >= codebook_size):
            raise ValueError(f"indices for scale {side} must lie in [0, {codebook_size}), "
                             f"got [{int(idx.min())}, {int(idx.max())}]")
    side_out = scales[-1]
    f_hat = code_values.new_zeros(batch, code_values.shape[1], side_out, side_out)
    for _, idx in used:
        f_hat = add_scale_codes(f_hat, code_values, idx)
    return f_hat


def add_scale_codes(f_hat: Tensor, code_values: Tensor, idx: Tensor) -> Tensor:
    """f_hat plus one scale's code values (``idx``: B x s x s) upsampled: one step of residual_decode,
    so a caller summing scale by scale (the generator's inputs) holds its partial sums bit for bit."""
    rows = code_values.index_select(0, idx.reshape(-1).to(code_values.device))
    return _add_scale(f_hat, rows, idx.shape[-1])[0]


# ---------------------------------------------------------------- setting checks


def check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(name: str, value, minimum: float = 0.0, strict: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {relation} {minimum}, got {value!r}")
    return float(value)


def check_scales(scales) -> tuple[int, ...]:
    """Side lengths of the scales: positive integers, strictly increasing, the last = latent size."""
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Iterable):
        raise ValueError(f"scales must be a sequence of positive integers, got {scales!r}")
    values = tuple(scales)
    if not values:
        raise ValueError("scales must not be empty: give the side lengths, e.g. (1, 2, 4, 8, 16)")
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in values):
        raise ValueError(f"scales must be positive integers, got {list(values)}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"scales must be strictly increasing, got {list(values)}")
    return tuple(int(v) for v in values)


# ---------------------------------------------------------------- the common base


class MultiScaleQuantizer(nn.Module):
    """A codebook quantizing a latent scale by scale. Each kind declares its constructor arguments
    in ``settings`` (in ``config`` order) and, in ``ignored``, the settings of other kinds that an
    experiment's shared ``quantizer`` block may carry (experiments inherit ``experiments.base``)."""

    kind: str
    settings: tuple[str, ...]
    ignored: tuple[str, ...] = ()

    def __init__(self, codebook_size: int, dim: int = 16, scales=F16_SCALES, beta: float = 0.05):
        super().__init__()
        self.codebook_size = check_int("codebook_size", codebook_size, 2)
        self.dim = check_int("dim", dim, 1)
        self.scales = check_scales(scales)
        self.beta = check_float("beta", beta, 0.0)
        self.latent_size = self.scales[-1]
        self.codebooks = nn.Embedding(self.codebook_size, self.dim)  # init N(0, 1)

    @classmethod
    def from_settings(cls, **settings) -> "MultiScaleQuantizer":
        """From ``config`` or an experiment's quantizer block; an unknown setting is a TypeError."""
        return cls(**{k: v for k, v in settings.items() if k not in cls.ignored})

    @property
    def config(self) -> dict:
        """What ``build_quantizer(**config)`` rebuilds this quantizer from."""
        values = {name: getattr(self, name) for name in self.settings}
        return {"kind": self.kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}}

    def code_values(self) -> Tensor:
        """What the decoder receives for each code (fp32)."""
        return self.codebooks.weight.float()

    def indices_to_latent(self, indices: list[Tensor], scales: int | None = None) -> Tensor:
        """Decode per-scale index maps; bitwise equal to forward's f_hat. ``scales`` k: from the
        first k scales only (a coarser latent at fewer bits)."""
        return residual_decode(indices, self.scales, self.code_values(), scales)

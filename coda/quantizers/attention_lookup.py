"""Attention code lookup for one scale as a single autograd Function.

Computes, for rows q (already RMS-normed) against keys K and values V (docs/method.md section 3):
  logits = q K^T * logit_scale, idx = argmax, z_q = V[idx] with the gradient of (onehot - sg(p) + p) V,
  entropy = mean_rows H(softmax(logits / T)) - H(mean_rows softmax(logits / T)).

A plain autograd version keeps several N x V tensors (logits, p, one-hot, ...) and walks them many
times. Here nothing N x V is kept: the forward stores per-row statistics, the backward recomputes the
logits in cache-sized row chunks and builds one logits gradient for both terms per chunk. At small T,
softmax(logits / T) is zero to fp32 precision except in a narrow band under each row's max, so the
entropy terms are computed on that band only (sparse); chunks where the band is wide are done densely.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

ENTROPY_EPS = 1e-5  # inside log() of the batch-mean distribution, as in the reference
# Entries with (logit - max) / T < -40 weigh < e^-40 of the max: even 65536 of them add < 1e-12.
ENTROPY_BAND = 40.0
SPARSE_MAX_FRACTION = 1 / 16  # a chunk whose band holds more of its entries is handled densely
CHUNK_ELEMENTS = 1 << 18  # rows x codebook per chunk on CPU: 1 MB fp32 temporaries stay in L2
ACCELERATOR_CHUNK_ELEMENTS = 1 << 24  # GPUs want few large kernels rather than cache-sized ones


def _row_chunks(num_rows: int, codebook_size: int, device: torch.device):
    elements = CHUNK_ELEMENTS if device.type == "cpu" else ACCELERATOR_CHUNK_ELEMENTS
    step = max(1, elements // codebook_size)
    for start in range(0, num_rows, step):
        yield slice(start, min(start + step, num_rows))


class _Band(NamedTuple):
    """Entries of softmax(logits / T) that are not negligible: the band under each row's max."""

    row: Tensor  # global row of each entry (sorted)
    col: Tensor  # code of each entry
    shift_t: Tensor  # (logit - row max) / T <= 0


def _band_stats(band: _Band, num_rows: int, prob_sum: Tensor) -> tuple[Tensor, Tensor]:
    """(log normaliser, entropy) per row from the band entries; adds p_T into prob_sum."""
    unnormed = band.shift_t.exp()
    norm = unnormed.new_zeros(num_rows).index_add_(0, band.row, unnormed)
    prob = unnormed / norm[band.row]
    prob_sum.index_add_(0, band.col, prob)
    log_norm = norm.log()
    return log_norm, log_norm - prob.new_zeros(num_rows).index_add_(0, band.row, prob * band.shift_t)


def _dense_stats(shift_t: Tensor, max_index: Tensor, prob_sum: Tensor) -> tuple[Tensor, Tensor]:
    """The same statistics from a full chunk of (logits - max) / T (overwritten)."""
    prob = torch.softmax(shift_t, dim=1)
    prob_sum += prob.sum(dim=0)
    log_norm = -prob.gather(1, max_index[:, None]).squeeze(1).log()  # p at the max = exp(0) / norm
    return log_norm, log_norm - shift_t.mul_(prob).sum(dim=1)


def _band_grad(band: _Band, g: Tensor, log_norm: Tensor, row_entropy: Tensor, coeff: float) -> Tensor:
    """d entropy / d logits at the band entries (see backward for the formula)."""
    log_prob = band.shift_t - log_norm[band.row]
    prob = log_prob.exp()
    prob_dot_g = prob.new_zeros(log_norm.shape[0]).index_add_(0, band.row, prob * g[band.col])
    return prob * (log_prob + g[band.col] + (row_entropy - prob_dot_g)[band.row]) * -coeff


class AttentionLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, keys: Tensor, values: Tensor, logit_scale: float, temperature: float):
        q_scaled = q * logit_scale
        num_rows, codebook_size = q.shape[0], keys.shape[0]
        inv_t = 1.0 / temperature
        indices = torch.empty(num_rows, dtype=torch.long, device=q.device)
        row_max = q.new_empty(num_rows)
        log_norm_t = q.new_zeros(num_rows)  # log sum exp((logits - max) / T)
        row_entropy = q.new_zeros(num_rows)  # H(softmax(logits / T))
        prob_sum_t = q.new_zeros(codebook_size)  # sum over rows of softmax(logits / T)
        parts, counts = [], []  # band entries; per chunk their number, or None when done densely
        for rows in _row_chunks(num_rows, codebook_size, q.device):
            logits = q_scaled[rows] @ keys.T
            max_logit, max_index = logits.max(dim=1)
            row_max[rows], indices[rows] = max_logit, max_index
            row, col = (logits >= (max_logit - ENTROPY_BAND * temperature)[:, None]).nonzero(as_tuple=True)
            if row.numel() <= SPARSE_MAX_FRACTION * logits.numel():
                parts.append((row + rows.start, col, (logits[row, col] - max_logit[row]) * inv_t))
                counts.append(row.numel())
            else:  # shifted so the max is 0: no cancellation at small T
                shift_t = logits.sub_(max_logit[:, None]).mul_(inv_t)
                log_norm_t[rows], row_entropy[rows] = _dense_stats(shift_t, max_index, prob_sum_t)
                counts.append(None)
        band = _Band(*(torch.cat(p) for p in zip(*parts))) if parts else None
        if band is not None:
            in_band = torch.zeros(num_rows, dtype=torch.bool, device=q.device)
            in_band[band.row] = True
            band_log_norm, band_entropy = _band_stats(band, num_rows, prob_sum_t)
            log_norm_t = torch.where(in_band, band_log_norm, log_norm_t)
            row_entropy = torch.where(in_band, band_entropy, row_entropy)
        mean_prob_t = prob_sum_t / num_rows
        mean_entropy = -(mean_prob_t * (mean_prob_t + ENTROPY_EPS).log()).sum()
        entropy = row_entropy.mean() - mean_entropy

        ctx.save_for_backward(q_scaled, keys, values, indices, row_max, log_norm_t, row_entropy, mean_prob_t)
        ctx.band, ctx.counts, ctx.logit_scale, ctx.inv_t = band, counts, logit_scale, inv_t
        ctx.mark_non_differentiable(indices)
        ctx.set_materialize_grads(False)
        return values.index_select(0, indices), indices, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_z_q, _grad_indices, grad_entropy):
        q_scaled, keys, values, indices, row_max, log_norm_t, row_entropy, mean_prob_t = ctx.saved_tensors
        band, inv_t = ctx.band, ctx.inv_t
        num_rows, codebook_size = q_scaled.shape[0], keys.shape[0]
        grad_q = q_scaled.new_zeros(q_scaled.shape)
        grad_keys = keys.new_zeros(keys.shape)
        grad_values = None
        if grad_z_q is not None:
            # forward value is onehot @ V, so V's gradient is a scatter of grad_z_q
            grad_values = values.new_zeros(values.shape).index_add_(0, indices, grad_z_q)
        if grad_entropy is not None:
            # d entropy / d logits = -c p_T (log p_T + g + H_row - <p_T, g>), g = d H(mean p_T) / d mean p_T
            g = -((mean_prob_t + ENTROPY_EPS).log() + mean_prob_t / (mean_prob_t + ENTROPY_EPS))
            entropy_coeff = float(grad_entropy) * inv_t / num_rows
            if band is not None:
                band_grad = _band_grad(band, g, log_norm_t, row_entropy, entropy_coeff)
        band_start = 0
        for rows, count in zip(_row_chunks(num_rows, codebook_size, q_scaled.device), ctx.counts):
            logits = q_scaled[rows] @ keys.T
            if grad_z_q is not None:
                # straight-through: d/dlogits of (p @ V) . grad = p * (grad V^T - <p, grad V^T>)
                prob = torch.softmax(logits, dim=1)
                grad_logits = (grad_z_q[rows] @ values.T).mul_(prob)
                grad_logits.addcmul_(prob, grad_logits.sum(dim=1, keepdim=True), value=-1.0)
            else:
                grad_logits = torch.zeros_like(logits)
            if grad_entropy is not None and count is not None:
                entries = slice(band_start, band_start + count)
                position = (band.row[entries] - rows.start, band.col[entries])
                grad_logits.index_put_(position, band_grad[entries], accumulate=True)
            elif grad_entropy is not None:
                shift_t = logits.sub_(row_max[rows, None]).mul_(inv_t)
                prob_t = torch.softmax(shift_t, dim=1)
                # log p_T = shift_t - log_norm; the per-row terms fold into one vector
                row_const = row_entropy[rows] - log_norm_t[rows] - prob_t @ g
                grad_logits.addcmul_(prob_t, shift_t.add_(g).add_(row_const[:, None]), value=-entropy_coeff)
            band_start += count or 0
            torch.mm(grad_logits, keys, out=grad_q[rows])
            grad_keys.addmm_(grad_logits.T, q_scaled[rows])
        grad_q.mul_(ctx.logit_scale)
        return grad_q, grad_keys, grad_values, None, None


def attention_lookup(q: Tensor, keys: Tensor, values: Tensor, logit_scale: float, temperature: float):
    """Returns (z_q rows, indices, entropy loss); see the module docstring."""
    return AttentionLookup.apply(q, keys, values, logit_scale, temperature)

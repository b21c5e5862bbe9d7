"""Benchmark: CodaQuantizer forward+backward vs a plain dense formulation of the same math.

Paper f16 shapes: batch 4, 16 x 16 x 16 latent, V = 16384, 10 scales, 2 CPU threads. The dense
baseline is what a straightforward implementation writes (logits and the straight-through value as
einsums over one-hot / softmax matrices). Both must give the same outputs; then times are compared.

    python bench/quantizer.py [--batch 4] [--iters 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

from coda.quantizers import CodaQuantizer
from coda.quantizers.attention_lookup import ENTROPY_EPS
from coda.quantizers.multiscale import downsample, upsample


def dense_forward(quantizer: CodaQuantizer, z: torch.Tensor):
    """The same math with every N x V matrix materialised (the baseline)."""
    attn, temperature, beta = quantizer.attn, quantizer.entropy_temperature, quantizer.beta
    codebook = quantizer.codebooks.weight
    keys = attn.norm_k(attn.to_k(codebook))
    values = attn.to_v(codebook)
    batch, channels, size, _ = z.shape
    f_res, f_hat = z, torch.zeros_like(z)
    indices, vq_losses, entropy_losses = [], [], []
    for side in quantizer.scales:
        r = downsample(f_res, side)
        rows = r.permute(0, 2, 3, 1).reshape(-1, channels)
        q = attn.norm_q(attn.to_q(rows))
        logits = torch.einsum("nd,vd->nv", q, keys) / math.sqrt(quantizer.attn_dim)
        prob = logits.softmax(dim=-1)
        idx = logits.argmax(dim=-1)
        onehot = F.one_hot(idx, quantizer.codebook_size).to(prob.dtype)
        z_q = torch.einsum("nv,vc->nc", onehot - prob.detach() + prob, values)
        z_q_hard = values[idx]
        vq_losses.append(
            F.mse_loss(z_q, rows) + F.mse_loss(z_q_hard.detach(), rows) + beta * F.mse_loss(z_q_hard, rows.detach())
        )
        scaled = logits / temperature
        prob_t = scaled.softmax(dim=-1)
        row_entropy = -(prob_t * scaled.log_softmax(dim=-1)).sum(dim=-1).mean()
        mean_prob = prob_t.mean(dim=0)
        entropy_losses.append(row_entropy + (mean_prob * (mean_prob + ENTROPY_EPS).log()).sum())
        up = upsample(z_q.reshape(batch, side, side, channels).permute(0, 3, 1, 2), size)
        f_hat = f_hat + up
        f_res = f_res - up
        indices.append(idx.reshape(batch, side, side))
    return f_hat, indices, torch.stack(vq_losses).mean(), torch.stack(entropy_losses).mean()


def ours_forward(quantizer: CodaQuantizer, z: torch.Tensor):
    out = quantizer(z)
    return out.f_hat, out.indices, out.vq_loss, out.entropy_loss


def step(forward, quantizer, z, target):
    """One forward+backward of the golden-file loss; returns outputs and gradients."""
    quantizer.zero_grad(set_to_none=True)
    z = z.detach().requires_grad_(True)
    f_hat, indices, vq_loss, entropy_loss = forward(quantizer, z)
    loss = ((f_hat - target) ** 2).mean() + vq_loss + 0.05 * entropy_loss
    loss.backward()
    grads = {"input": z.grad, **{name: p.grad for name, p in quantizer.named_parameters()}}
    return {"f_hat": f_hat.detach(), "vq_loss": vq_loss.detach(), "entropy_loss": entropy_loss.detach()}, indices, grads


def check_same(ours, dense) -> None:
    (o_vals, o_idx, o_grads), (d_vals, d_idx, d_grads) = ours, dense
    assert len(o_idx) == len(d_idx) and all(torch.equal(a, b) for a, b in zip(o_idx, d_idx)), "indices differ"
    for name in o_vals:
        torch.testing.assert_close(o_vals[name], d_vals[name], rtol=1e-5, atol=1e-6, msg=name)
    for name in o_grads:
        scale = d_grads[name].abs().max().item()
        torch.testing.assert_close(o_grads[name], d_grads[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


def time_interleaved(fns: dict, iters: int) -> dict:
    """Per-iteration seconds of each fn, alternating them so a shared CPU's load hits both alike."""
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    quantizer = CodaQuantizer()  # paper f16 defaults: V=16384, C=16, d=32, 10 scales
    z = torch.randn(args.batch, quantizer.dim, quantizer.latent_size, quantizer.latent_size)
    target = torch.randn_like(z)

    check_same(step(ours_forward, quantizer, z, target), step(dense_forward, quantizer, z, target))
    print(f"outputs match (indices equal; f_hat, losses, all gradients close) at batch {args.batch}")
    times = time_interleaved(
        {name: (lambda fwd=fwd: step(fwd, quantizer, z, target)) for name, fwd in
         [("ours", ours_forward), ("dense", dense_forward)]},
        args.iters,
    )
    print(f"fwd+bwd seconds per iteration, {torch.get_num_threads()} threads, {args.iters} iterations")
    if load_before >= 1.0:
        # OpenMP threads stall at every op's barrier while another process holds a core
        print(f"  warning: load average {load_before:.1f} on {os.cpu_count()} CPUs before the run: "
              "other processes share the CPU, timings are unreliable")
    for name, values in times.items():
        print(f"  {name:5s}: " + " ".join(f"{v:.3f}" for v in values)
              + f"   min {min(values):.3f}  median {statistics.median(values):.3f}")
    for stat in (min, statistics.median):
        ratio = stat(times["dense"]) / stat(times["ours"])
        print(f"  dense/ours ({stat.__name__}): {ratio:.2f}x")


if __name__ == "__main__":
    main()

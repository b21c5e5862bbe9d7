"""Data parallelism by hand: every rank computes its micro-batches, gradients are summed.

Launched by ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) or run as one
process. We all-reduce gradients ourselves instead of wrapping in DDP because the adaptive GAN
weight takes ``autograd.grad`` inside the step, which DDP's reducer hooks do not expect.
Each rank scales its loss by 1 / (world * accumulation), so the summed gradient equals the
single-process gradient over the same global batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..devices import pick_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> DistInfo:
    """Pick the device and, under torchrun, join the process group (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = pick_device(device).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    owns = world > 1 and not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    chosen = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistInfo(rank, world, local_rank, chosen, owns)


def teardown(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()
        if info.owns_group:
            dist.destroy_process_group()


def sum_gradients(params, info: DistInfo) -> None:
    """Sum .grad over ranks in one flat buffer (identical on every rank afterwards)."""
    if info.world_size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def sum_tensor(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world_size > 1:
        dist.all_reduce(tensor)
    return tensor


def broadcast_state(module: torch.nn.Module, info: DistInfo, buffers_only: bool = False) -> None:
    """Copy rank 0's parameters and/or buffers to every rank.

    Used once at start (identical initial weights) and after each step for buffers that every
    rank updates from its own micro-batches: BatchNorm running statistics and spectral-norm
    power-iteration vectors of the discriminator.
    """
    if info.world_size == 1:
        return
    tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
    for tensor in tensors:
        dist.broadcast(tensor.data, src=0)


def check_in_sync(module: torch.nn.Module, info: DistInfo, what: str) -> None:
    """Fail loudly if any parameter differs between ranks (compares exact float64 checksums)."""
    if info.world_size == 1:
        return
    sums = torch.stack([p.detach().double().sum() for p in module.parameters()]).to(info.device)
    low, high = sums.clone(), sums.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        names = [n for (n, _), a, b in zip(module.named_parameters(), low, high) if a != b]
        raise RuntimeError(f"{what} weights differ between ranks: {names[:5]}")

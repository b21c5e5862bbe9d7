"""Exponential moving average of a model's trainable weights (docs/method.md section 5)."""
from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, max_decay: float = 0.9999) -> float:
    """min(max_decay, (s/2 + 1) / (s/2 + 10)): short memory early, long memory late."""
    return min(max_decay, (step / 2 + 1) / (step / 2 + 10))


class EMA:
    """A frozen copy of ``model`` kept in eval mode; evaluation and the saved tokenizer use it.

    Only parameters the live model trains are averaged (frozen ones never change); buffers are copied.
    """

    def __init__(self, model: nn.Module, max_decay: float = 0.9999, start_epoch: int = 4):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.max_decay, self.start_epoch = max_decay, start_epoch
        self.trained = [name for name, p in model.named_parameters() if p.requires_grad]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, epoch: int) -> float:
        """Call after the optimizer step of index ``step`` (counted from 0, as coda/train/loop.py does), in
        epoch ``epoch``. Returns the decay used (0 = copy)."""
        decay = ema_decay(step, self.max_decay) if epoch >= self.start_epoch else 0.0
        live, averaged = dict(model.named_parameters()), dict(self.model.named_parameters())
        for name in self.trained:
            if decay > 0:
                averaged[name].mul_(decay).add_(live[name].detach(), alpha=1 - decay)
            else:
                averaged[name].copy_(live[name].detach())
        for averaged, buffer in zip(self.model.buffers(), model.buffers()):
            averaged.copy_(buffer)
        return decay

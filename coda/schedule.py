"""Learning-rate schedule: a pure function of the step, so resuming needs only the step count.
Cosine: the tokenizer's trainer (coda/train) and the VAE pretraining (coda/vae_train.py); VAR's
``lin0``: the generator's trainer (coda/generation/train.py)."""
from __future__ import annotations

import math


def learning_rate(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0) -> float:
    """Cosine from ``base_lr`` at step 0 to zero at ``total_steps`` (the method uses no warm-up)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def lin0_learning_rate(step: int, total_steps: int, warmup_steps: float, peak_lr: float, final_fraction: float,
                  start_fraction: float = 0.005) -> float:
    """VAR's ``lin0`` (utils/lr_control.py lr_wd_annealing): linear warm-up from 0.005 x peak over
    ``warmup_steps`` (rounded), the peak held for the first 5 % of the rest, then linear decay to
    ``final_fraction`` x peak at the last step."""
    warmup = round(warmup_steps)
    if step < warmup:
        return peak_lr * (start_fraction + (1 - start_fraction) * step / warmup)
    passed = (step - warmup) / max(1, total_steps - 1 - warmup)
    hold = 0.05
    if passed < hold:
        return peak_lr
    return peak_lr * (final_fraction + (1 - final_fraction) * (1 - passed) / (1 - hold))

"""Learning-rate schedule: a pure function of the step, so resuming needs only the step count.
Shared by the tokenizer's trainer (coda/train) and the VAE pretraining (coda/vae_train.py)."""
from __future__ import annotations

import math


def learning_rate(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0) -> float:
    """Cosine from ``base_lr`` at step 0 to zero at ``total_steps`` (the method uses no warm-up)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))

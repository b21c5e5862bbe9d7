"""Training losses on pixels and the GAN terms (method.md section 4), each a small pure function.

Pixels are in [-1, 1]. Every loss returns a scalar tensor averaged over its batch, so that
gradient accumulation can scale it by 1 / micro-batches and stay exact. The quantizer's own
losses (VQ, entropy) come with its output (``QuantizerOutput.vq_loss`` / ``.entropy_loss``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def l1(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x_hat - x).abs().mean()


def mse(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x_hat - x).pow(2).mean()


class LPIPSLoss(nn.Module):
    """LPIPS distance averaged over the batch, on the real offline weights (VGG trains, AlexNet evaluates).

    Frozen and always in eval mode (LPIPS's heads carry dropout), but gradients flow to its inputs.
    """

    def __init__(self, net: str = "vgg"):
        super().__init__()
        from .perceptual import load_lpips

        self.net = net
        self.model = load_lpips(net).eval().requires_grad_(False)

    def train(self, mode: bool = True):
        return self  # frozen: never leave eval mode

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.model(x_hat, x).mean()


# -- adversarial (method.md section 4) ------------------------------------------------------
def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


def adaptive_weight(nll_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4, eps: float = 1e-6) -> torch.Tensor:
    """VQGAN's balance ||grad nll|| / (||grad gan|| + eps), clamped to [0, max_weight], detached.

    ``last_layer`` is the tensor both gradients are taken at (a LoRA ``up`` weight, or the decoder
    input when the VAE is frozen); the graph is kept for the real backward pass.
    """
    nll_grad, = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)
    gan_grad, = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)
    weight = nll_grad.float().norm() / (gan_grad.float().norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


def gan_ramp(step: int, total_steps: int) -> float:
    """GAN weight grows linearly from 0 to 1 over the whole run (the discriminator trains from step 0)."""
    return min(1.0, step / max(total_steps, 1))

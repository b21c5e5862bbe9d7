"""Training losses (docs/method.md section 4): small pure functions, and ``TokenizerLoss``, the one
place that combines them for a micro-batch (weights, LPIPS, GAN terms, the adaptive weight).

Pixels are in [-1, 1]. Every loss returns a scalar tensor averaged over its batch, so that
gradient accumulation can scale it by 1 / micro-batches and stay exact. The quantizer's own
losses (VQ, entropy) come with its output (``QuantizerOutput.vq_loss`` / ``.entropy_loss``).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from .lora import ADAPTER_NAME
from .vae import posterior_latent


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

        self.model = load_lpips(net).eval().requires_grad_(False)

    def train(self, mode: bool = True):
        return self  # frozen: never leave eval mode

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.model(x_hat, x).mean()


# -- adversarial (docs/method.md section 4) ------------------------------------------------------
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


def adaptive_weight_layer(vae_or_module: nn.Module, variant: str) -> nn.Parameter:
    """The LoRA `up` weight used as "last layer" by the VQGAN adaptive GAN weight (docs/method.md section 4):
    f16 the lowest-resolution decoder upsample conv, f8 the last resnet conv2 of the
    highest-resolution up block."""
    vae = getattr(vae_or_module, "autoencoder", vae_or_module)  # diffusers names inside a ContinuousVAE
    up_blocks = vae.decoder.up_blocks  # ordered lowest -> highest resolution
    if variant == "f16":
        conv = next(block.upsamplers[0].conv for block in up_blocks if block.upsamplers is not None)
    elif variant == "f8":
        conv = up_blocks[-1].resnets[-1].conv2
    else:
        raise ValueError(f"variant must be 'f16' or 'f8', got {variant!r}")
    if not hasattr(conv, "lora_B"):
        raise ValueError(f"the {variant} adaptive-weight conv has no LoRA; call add_lora first")
    return conv.lora_B[ADAPTER_NAME].weight


def gan_ramp(step: int, total_steps: int) -> float:
    """GAN weight grows linearly from 0 to 1 over the whole run (the discriminator trains from step 0)."""
    return min(1.0, step / max(total_steps, 1))


# -- the objective of one micro-batch -------------------------------------------------------
def adaptive_weight_target(tokenizer, variant: str | None = None) -> str:
    """Where the adaptive weight differentiates: the method's "last layer", a LoRA ``up`` weight
    (f16: lowest-resolution upsample conv; f8: last conv2 of the highest-resolution up block),
    from the experiment's ``variant``, else f16 when LoRA targets the upsample convs (the f16
    recipe) and f8 otherwise. Without LoRA no decoder weight trains, so the decoder input f_hat."""
    if not tokenizer.lora:
        return "decoder_input"
    return variant or ("f16" if "upsample" in tokenizer.lora.get("targets", ()) else "f8")


class TokenizerLoss:
    """Everything one micro-batch is trained on (docs/method.md section 4); the loop calls it.

    ``latents`` mode: mse(f_hat, z) and the quantizer's VQ and entropy losses on a posterior sample
    of cached moments. ``images`` mode: encoder -> quantizer -> decoder, nll = l1 + mse + LPIPS,
    the quantizer's losses and, with a discriminator, ramp x adaptive weight x hinge GAN loss;
    ``discriminator_loss`` then trains the discriminator on the same micro-batch.
    ``cfg``: the train settings (``coda.train.config.TrainConfig``). ``cfg.disc_objective``:
    ``release`` lets the generator's GAN term reach the discriminator's gradients too, as the
    released loop does (D follows hinge + ramp x lambda x (-mean D(x_hat))); ``hinge`` freezes D
    during the generator pass, so D follows the hinge loss alone.
    """

    def __init__(self, tokenizer, cfg, discriminator=None, lpips=None, autocast=nullcontext(), variant=None):
        self.tokenizer, self.cfg, self.disc, self.lpips, self.autocast = tokenizer, cfg, discriminator, lpips, autocast
        self.d_params = [p for p in discriminator.parameters() if p.requires_grad] if discriminator else []
        self.adaptive_target = adaptive_weight_target(tokenizer, variant) if discriminator else None
        # The DINO discriminator's random view is drawn from a generator seeded per micro-batch, so
        # that it does not depend on how a global batch is split over ranks.
        self.view_rng = torch.Generator()
        random_view = discriminator is not None and discriminator.config["kind"] == "dino"
        self.disc_kwargs = {"generator": self.view_rng} if random_view else {}
        if cfg.data_mode == "latents":
            self.names = ["latent_mse", "vq", "entropy"]
        else:
            self.names = ["l1", "mse", "lpips", "nll", "vq", "entropy"] + (
                ["gan_g", "adaptive_weight", "d_loss", "logits_real", "logits_fake"] if discriminator else [])

    def __call__(self, batch, noise_seed: int, ramp: float):
        """(total generator loss, its parts, the code indices, the reconstruction or None)."""
        if self.cfg.data_mode == "latents":
            return *self._latent_loss(*batch, noise_seed), None
        return self._image_loss(batch, noise_seed, ramp)

    def _latent_loss(self, mean, logvar, noise_seed):
        z = posterior_latent(self.tokenizer.vae, mean, logvar, self.tokenizer.posterior, noise_seed)
        with self.autocast:
            out = self.tokenizer.quantizer(z)
        parts = {"latent_mse": mse(out.f_hat.float(), z), "vq": out.vq_loss, "entropy": out.entropy_loss}
        total = parts["latent_mse"] + self.cfg.vq_weight * parts["vq"] + self.cfg.entropy_weight * parts["entropy"]
        return total, parts, out.indices

    def _image_loss(self, x, noise_seed, ramp):
        cfg, vae, disc, autocast = self.cfg, self.tokenizer.vae, self.disc, self.autocast
        self.view_rng.manual_seed(noise_seed)
        for p in self.d_params:  # hinge: the generator loss sends no gradient to the discriminator
            p.requires_grad_(cfg.disc_objective == "release")
        encoder_trains = any(p.requires_grad for p in vae.autoencoder.encoder.parameters())
        with autocast:
            with torch.set_grad_enabled(encoder_trains):  # a frozen encoder needs no graph
                posterior = vae.encode(x)
            z = posterior_latent(vae, posterior.mean.float(), posterior.logvar.float(), self.tokenizer.posterior,
                                 noise_seed)
            out = self.tokenizer.quantizer(z)
            x_hat = vae.decode(out.f_hat).float()
        parts = {"l1": l1(x_hat, x), "mse": mse(x_hat, x)}
        parts["lpips"] = self.lpips(x_hat, x) if self.lpips is not None else x_hat.new_zeros(())
        nll = cfg.l1_weight * parts["l1"] + cfg.mse_weight * parts["mse"] + cfg.lpips_weight * parts["lpips"]
        total = nll + cfg.vq_weight * out.vq_loss + cfg.entropy_weight * out.entropy_loss
        parts.update(nll=nll, vq=out.vq_loss, entropy=out.entropy_loss)
        if disc is not None:
            with autocast:
                logits_fake = disc(x_hat, **self.disc_kwargs).float()
            parts["gan_g"] = hinge_g_loss(logits_fake)
            last = (out.f_hat if self.adaptive_target == "decoder_input"
                    else adaptive_weight_layer(vae, self.adaptive_target))
            weight = adaptive_weight(nll, parts["gan_g"], last) * cfg.gan_weight
            parts["adaptive_weight"] = weight
            total = total + ramp * weight * parts["gan_g"]
        return total, parts, out.indices, x_hat

    def discriminator_loss(self, x, x_hat, parts: dict) -> torch.Tensor:
        """Hinge loss on real x and the detached reconstruction; its terms are added to ``parts``."""
        for p in self.d_params:
            p.requires_grad_(True)
        with self.autocast:
            logits_real = self.disc(x, **self.disc_kwargs).float()
            logits_fake = self.disc(x_hat.detach(), **self.disc_kwargs).float()
        parts["d_loss"] = hinge_d_loss(logits_real, logits_fake)
        parts.update(logits_real=logits_real.mean().detach(), logits_fake=logits_fake.mean().detach())
        return parts["d_loss"]

"""Train the small KL-VAE that stands in for a pretrained one at demo scale.

No pretrained VAE can be downloaded offline, so the demo first fits a small diffusers
``AutoencoderKL`` on the demo photographs (L1 + MSE reconstruction and a small KL term, as LDM's
KL autoencoders are trained, without the GAN). CODA then treats it as the frozen continuous VAE.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from .files import write_json
from .train.schedule import learning_rate
from .vae import ContinuousVAE


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, var) || N(0, 1)) summed over latent elements, averaged over the batch."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1).mean()


def train_small_vae(dataset, out_dir: str | Path, *, architecture: dict, steps: int, batch_size: int,
                    lr: float = 1e-3, warmup: int = 50, kl_weight: float = 1e-6, mse_weight: float = 1.0,
                    seed: int = 0, num_workers: int = 0) -> ContinuousVAE:
    """Fit ``ContinuousVAE.small(**architecture)`` on ``dataset`` (images in [-1, 1]) and save it.

    Writes ``out_dir/vae`` (diffusers ``save_pretrained``), ``out_dir/train_log.tsv`` and
    ``out_dir/vae_info.json``. The latent scale factor is then set from the training data so the
    normalised latent has unit variance, as the paper's VAEs' factors were chosen.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vae = ContinuousVAE.small(**architecture)
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(dataset, replacement=True, num_samples=steps * batch_size, generator=generator)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True)
    log = open(out_dir / "train_log.tsv", "w")
    log.write("step\tlr\tloss\tl1\tmse\tkl\timages_per_s\n")
    bar = tqdm(total=steps, desc="train vae", unit="step", mininterval=10)
    start = time.perf_counter()
    for step, images in enumerate(loader):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup)
        posterior = vae.encode(images)
        recon = vae.autoencoder.decode(posterior.sample(generator)).sample
        l1, mse = F.l1_loss(recon, images), F.mse_loss(recon, images)
        kl = kl_divergence(posterior.mean, posterior.logvar)
        loss = l1 + mse_weight * mse + kl_weight * kl
        if not torch.isfinite(loss):
            raise FloatingPointError(f"VAE training diverged at step {step} (loss {loss.item()}); lower vae.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        rate = (step + 1) * batch_size / (time.perf_counter() - start)
        log.write(f"{step}\t{optimizer.param_groups[0]['lr']:.6g}\t{loss.item():.6f}\t{l1.item():.6f}\t"
                  f"{mse.item():.6f}\t{kl.item():.4f}\t{rate:.2f}\n")
        bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{rate:.1f}", refresh=False)
        bar.update()
    bar.close()
    log.close()
    vae.eval()
    scale = latent_scale_factor(vae, dataset, batch_size)
    vae.autoencoder.register_to_config(scaling_factor=scale, shift_factor=None)
    vae.autoencoder.save_pretrained(out_dir / "vae")
    info = {"architecture": architecture, "steps": steps, "batch_size": batch_size, "lr": lr,
            "kl_weight": kl_weight, "scaling_factor": scale, "seed": seed}
    write_json(out_dir / "vae_info.json", info)
    return ContinuousVAE.from_pretrained(out_dir / "vae")


@torch.no_grad()
def latent_scale_factor(vae: ContinuousVAE, dataset, batch_size: int, max_images: int = 512) -> float:
    """1 / std of posterior samples over (a prefix of) the data, rounded to 4 digits."""
    generator = torch.Generator().manual_seed(0)
    samples = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for images in loader:
        samples.append(vae.encode(images).sample(generator))
        if sum(len(s) for s in samples) >= max_images:
            break
    return round(1.0 / torch.cat(samples).std().item(), 4)

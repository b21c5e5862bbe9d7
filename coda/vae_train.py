"""Train the small KL-VAE that stands in for a pretrained one at demo and tiny scale.

No pretrained VAE can be downloaded offline, so the project fits a small diffusers
``AutoencoderKL`` on the bundled photographs (L1 + MSE reconstruction and a small KL term, as LDM's
KL autoencoders are trained, without the GAN). CODA then treats it as the frozen continuous VAE.

Two ways: ``train_small_vae`` inside the `vae` stage (tiny scale: seconds), or ``pretrain_vae``
once, for longer than a demo run can afford (``coda pretrain-vae``, ``make demo-vae``): it writes a
diffusers folder with its provenance (recipe, command, commit, data hash, steps) that the repository
ships (models/demo-vae) and the demo's `vae` stage reads like any pretrained VAE.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from .artifacts import CARD_NAME, PROVENANCE, TRAIN_LOG, TRAIN_NPY, VAE_DIR
from .files import file_sha256, library_versions, write_json
from .schedule import learning_rate
from .vae import ContinuousVAE


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, var) || N(0, 1)) summed over latent elements, averaged over the batch."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1).mean()


def jitter_colours(images: torch.Tensor, *, gain: float, offset: float, generator: torch.Generator) -> torch.Tensor:
    """Images in [-1, 1] with each channel scaled by U(1 - gain, 1 + gain) and shifted by
    U(-offset, offset) in 0-1 units, per image, then clipped. Measured at demo scale (1,000 steps,
    held-out photos): 21.2 dB / colour error 7.6 without, 22.6 / 4.2 with gain 0.25 and offset 0.1;
    twice as much (21.8 / 4.5) or adding random channel permutations (22.2 / 4.4) did worse."""
    n = len(images)
    scale = 1 + gain * (2 * torch.rand(n, 3, 1, 1, generator=generator) - 1)
    shift = offset * (2 * torch.rand(n, 3, 1, 1, generator=generator) - 1)
    return (((images + 1) / 2 * scale + shift).clamp(0, 1)) * 2 - 1


def train_small_vae(dataset, out_dir: str | Path, *, architecture: dict, steps: int, batch_size: int,
                    lr: float = 1e-3, warmup: int = 50, kl_weight: float = 1e-6, mse_weight: float = 1.0,
                    seed: int = 0, flip: bool = False, colour_jitter: dict | None = None,
                    num_workers: int = 0) -> tuple[ContinuousVAE, dict]:
    """Fit ``ContinuousVAE.small(**architecture)`` on ``dataset`` (images in [-1, 1]) and save it.

    Writes ``out_dir/vae`` (diffusers ``save_pretrained``) and ``out_dir/train_log.tsv``; returns the
    VAE and the run's settings (the vae stage records them in its ``vae_info.json``). ``flip``: mirror
    each image left-right with probability 1/2 (drawn from the run's generator). ``colour_jitter``:
    ``jitter_colours``' gain and offset, applied after the flip (the bundled training photos hold few
    colours). The latent scale factor is then set from the training data so the normalised latent has
    unit variance, as the paper's VAEs' factors were chosen.
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
    log = open(out_dir / TRAIN_LOG, "w")
    log.write("step\tlr\tloss\tl1\tmse\tkl\timages_per_s\n")
    bar = tqdm(total=steps, desc="train vae", unit="step", mininterval=10)
    start = time.perf_counter()
    for step, images in enumerate(loader):
        if flip:
            mirrored = torch.rand(len(images), generator=generator) < 0.5
            images = torch.where(mirrored[:, None, None, None], images.flip(3), images)
        if colour_jitter:
            images = jitter_colours(images, generator=generator, **colour_jitter)
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
    vae.autoencoder.save_pretrained(out_dir / VAE_DIR)
    settings = {"architecture": architecture, "steps": steps, "batch_size": batch_size, "lr": lr,
                "kl_weight": kl_weight, "flip": flip, "colour_jitter": colour_jitter, "scaling_factor": scale,
                "seed": seed}
    return ContinuousVAE.from_pretrained(out_dir / VAE_DIR), settings


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


# ---- a pretrained VAE, built once and shipped -----------------------------------------------------
WEIGHTS = SAFETENSORS_WEIGHTS_NAME  # what save_pretrained writes


def pretrain_vae(recipe: dict, resolution: int, out_dir: str | Path, *, command: str) -> dict:
    """Train ``recipe`` on the demo photos' train split and write ``out_dir``: the diffusers folder,
    its ``train_log.tsv`` and ``provenance.json``; returns the provenance.

    recipe: {prepare: {crops_per_train_photo, seed}, architecture: {...}, train: {steps, ...}, threads}.
    Only the train split's crops are trained on (prepare_demo keeps the validation photos apart).
    With the same recipe, library versions and thread count the weights are the same bit for bit
    (the provenance records all three). ``out_dir`` is replaced only when everything is written.
    """
    from .data.demo import prepare_demo
    from .data.datasets import train_dataset

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)  # the finished folder is renamed into place there
    torch.set_num_threads(int(recipe["threads"]))
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
        tmp = Path(tmp)
        prepared = prepare_demo(tmp / "prepared", resolution=resolution, crops_per_val_photo=1,
                                on_bad_image="error", **recipe["prepare"])
        start = time.perf_counter()
        _, info = train_small_vae(train_dataset(tmp / "prepared"), tmp / "run", architecture=recipe["architecture"],
                                  **recipe["train"])
        seconds = time.perf_counter() - start
        staging = tmp / "run" / VAE_DIR  # the diffusers folder train_small_vae saved, completed in place
        shutil.move(tmp / "run" / TRAIN_LOG, staging / TRAIN_LOG)
        provenance = {
            "recipe": recipe, "resolution": resolution, "command": command, **_git_state(),
            "train_data": {"sha256": file_sha256(tmp / "prepared" / TRAIN_NPY),
                           "crops": prepared["counts"]["train"],
                           "photos": [p["name"] for p in prepared["train_photos"]],
                           "held_out_photos": [p["name"] for p in prepared["val_photos"]]},
            "steps": recipe["train"]["steps"], "scaling_factor": info["scaling_factor"],
            "threads": torch.get_num_threads(), "train_seconds": round(seconds, 1),
            "weights_sha256": file_sha256(staging / WEIGHTS), "versions": library_versions(),
        }
        write_json(staging / PROVENANCE, provenance)
        (staging / CARD_NAME).write_text(_model_card(provenance))
        for path in [staging, *staging.iterdir()]:  # the temporary directory's owner-only modes
            path.chmod(0o755 if path.is_dir() else 0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    return provenance


def _model_card(provenance: dict) -> str:
    recipe, data = provenance["recipe"], provenance["train_data"]
    arch, train = recipe["architecture"], recipe["train"]
    return f"""# The demo's pretrained VAE

A small diffusers `AutoencoderKL` (channels {arch['block_out_channels']}, {arch['latent_channels']} latent
channels, a {2 ** (len(arch['block_out_channels']) - 1)}x downsampling) that stands in, at demo scale, for
the pretrained VAE CODA starts from: the demo's `vae` stage reads this folder as a user's pipeline reads
a hub VAE (`ContinuousVAE.from_pretrained("models/demo-vae")`), and nothing in the demo trains it.

- Trained by `{provenance['command']}` at commit `{provenance['commit']}`: {provenance['steps']} steps of
  batch {train['batch_size']} (L1 + MSE + KL x {train.get('kl_weight', 1e-6):g}), {provenance['train_seconds']:.0f} s
  on {provenance['threads']} CPU thread(s).
- Data: {data['crops']} random {provenance['resolution']} px crops (sha256 `{data['sha256'][:16]}...`) of the
  {len(data['photos'])} bundled training photographs ({', '.join(data['photos'])}); the held-out photographs
  ({', '.join(data['held_out_photos'])}) were never seen.
- `provenance.json` holds the recipe, the library versions and the weights' sha256; `train_log.tsv` the
  training curve. `make demo-vae` rebuilds the weights bit for bit (same recipe, libraries and thread
  count); the `vae` stage refuses this folder if its weights or recipe differ from params.yaml's.
"""


def check_pretrained(path: str | Path, recipe: dict, resolution: int, key: str) -> dict:
    """The provenance of a shipped pretrained VAE, refused when its weights are not the ones it
    records or when it was built from another recipe than params.yaml's ``key``."""
    path = Path(path)
    rebuild = f"rebuild it with `make demo-vae` (coda pretrain-vae), or restore it with `git checkout {path}`"
    record = path / PROVENANCE
    if not record.is_file():
        raise FileNotFoundError(f"{record} not found: {path} is not a VAE built by coda pretrain-vae; {rebuild}")
    provenance = json.loads(record.read_text())
    weights = path / WEIGHTS
    if not weights.is_file() or file_sha256(weights) != provenance["weights_sha256"]:
        raise FileNotFoundError(f"{weights} is missing or not the file {record} records (sha256 "
                                f"{provenance['weights_sha256'][:12]}...); {rebuild}")
    if provenance["recipe"] != recipe or provenance["resolution"] != resolution:
        from .config import ParamsError

        raise ParamsError(f"{path} was built from another recipe than {key}.recipe at resolution {resolution} "
                          f"({record} holds the one it was built from): {rebuild}")
    return provenance


def _git_state() -> dict:
    """The commit the code came from, and whether the checkout had uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "uncommitted_changes": None}
    return {"commit": commit, "uncommitted_changes": dirty}

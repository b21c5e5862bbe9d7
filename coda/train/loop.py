"""The training loop for every experiment kind (method.md sections 4-5).

``latents`` mode: frozen VAE, cached posterior moments are sampled, the quantizer learns to
reconstruct the latent (mse(f_hat, z) + its VQ and entropy losses).
``images`` mode: encoder (LoRA or frozen) -> quantizer -> decoder with the full generator loss,
and a discriminator step on the same micro-batch.

All randomness of a step is a function of (seed, step, micro-batch): the data order of an epoch
comes from (seed, epoch) and the posterior noise from (seed, step, micro-batch). That makes a
resumed run, or a run split over ranks, see exactly what an uninterrupted single process sees.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .. import __version__
from ..discriminators import build_discriminator, check_discriminator
from ..ema import EMA
from ..vae import posterior_latent
from ..losses import LPIPSLoss, adaptive_weight, gan_ramp, hinge_d_loss, hinge_g_loss, l1, mse
from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .schedule import learning_rate

CHECKPOINT = "checkpoints/last.safetensors"
LOG = "train_log.tsv"
RUN = "run.json"
# train: keys that may change between a run and its resumption
RESUMABLE_CHANGES = {"checkpoint_every", "progress_interval", "num_workers", "save_live", "device",
                     "bf16", "channels_last", "tf32", "compile"}


class NonFiniteLossError(RuntimeError):
    """A loss or gradient became NaN/inf; training stopped before the optimizer step."""


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    tokenizer: nn.Module          # live weights
    ema_tokenizer: nn.Module      # EMA weights: what tokenizer/ holds and evaluation uses
    discriminator: nn.Module | None


# ---------------------------------------------------------------------------- building blocks
def build_tokenizer(experiment: dict, vae_dir, data_mode: str):
    from ..lora import add_lora
    from ..quantizers import build_quantizer
    from ..tokenizer import Tokenizer
    from ..vae import ContinuousVAE

    lora = experiment.get("lora")
    if lora and data_mode == "latents":
        raise ValueError("latents mode trains the quantizer on cached latents of the frozen VAE, so "
                         "LoRA would never be used: set lora: null, or train.data_mode: images")
    vae = ContinuousVAE.from_pretrained(vae_dir).freeze()
    if lora:
        add_lora(vae, **lora)  # only the LoRA branches train
    # The code dimension is the VAE's latent channel count unless the experiment says otherwise.
    quantizer = build_quantizer(**{"dim": vae.latent_channels, **experiment["quantizer"]})
    return Tokenizer(vae, quantizer, lora or None, experiment.get("posterior", "sample"))


def adaptive_weight_target(tokenizer, cfg: TrainConfig, experiment: dict) -> str:
    """Which tensor the VQGAN adaptive weight differentiates at.

    The method's "last layer" is a LoRA ``up`` weight (f16: lowest-resolution upsample conv; f8:
    last conv2 of the highest-resolution up block). ``auto`` reads ``variant`` from the
    experiment, else takes f16 when LoRA targets the upsample convs (the f16 recipe) and f8
    otherwise. Without LoRA no decoder weight trains, so the decoder input f_hat is used.
    """
    choice = cfg.adaptive_layer
    if choice == "auto":
        if not tokenizer.lora:
            return "decoder_input"
        choice = experiment.get("variant") or ("f16" if "upsample" in tokenizer.lora.get("targets", ()) else "f8")
    if choice != "decoder_input" and not tokenizer.lora:
        raise ValueError(f"train.adaptive_layer {choice!r} needs LoRA; use decoder_input or auto")
    return choice


def open_dataset(cfg: TrainConfig, images, latents):
    """images: a Dataset, a uint8 .npy or a prepared data directory; latents: a Dataset of
    (mean, logvar) pairs or a cache directory."""
    if cfg.data_mode == "latents":
        from ..cache import LatentDataset

        if latents is None:
            raise ValueError("data_mode latents needs the latent cache directory (--latents)")
        return latents if isinstance(latents, torch.utils.data.Dataset) else LatentDataset(latents, "train")
    if images is None:
        raise ValueError("data_mode images needs training images (--images: .npy or prepared dir)")
    if isinstance(images, torch.utils.data.Dataset):
        return images
    from ..data.datasets import ArrayImages, train_dataset

    path = Path(images)
    return ArrayImages(path) if path.suffix == ".npy" else train_dataset(path, seed=cfg.seed)


def _mix(*numbers: int) -> int:
    """A seed from several integers (distinct tuples give distinct seeds in practice)."""
    seed = 0
    for n in numbers:
        seed = (seed * 1_000_003 + int(n) + 1) % (2 ** 63 - 1)
    return seed


def micro_batch_stream(dataset, cfg: TrainConfig, info, start_step: int, steps_per_epoch: int):
    """This rank's micro-batches from ``start_step`` on, epoch after epoch.

    Step s of epoch e takes global batch s of a permutation seeded by (seed, e); micro-batch
    m = k * world + rank of it goes to accumulation round k on this rank.
    """
    world, micro = info.world_size, cfg.batch_size
    global_batch = micro * cfg.grad_accum * world
    step = start_step
    while True:
        epoch, first = divmod(step, steps_per_epoch)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(_mix(cfg.seed, epoch)))
        batches = []
        for s in range(first, steps_per_epoch):
            chunk = order[s * global_batch:(s + 1) * global_batch]
            for k in range(cfg.grad_accum):
                m = k * world + info.rank
                batches.append(chunk[m * micro:(m + 1) * micro].tolist())
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        yield from DataLoader(dataset, batch_sampler=batches, num_workers=cfg.num_workers,
                              pin_memory=info.device.type == "cuda")
        step = (epoch + 1) * steps_per_epoch


def trainable_state(module: nn.Module, like: nn.Module | None = None) -> dict:
    """Trained parameters and all buffers: what a checkpoint must hold (frozen weights reload from
    disk). ``like``: the live model whose trained names apply (the EMA copy trains nothing itself)."""
    like = like or module
    keep = {n for n, p in like.named_parameters() if p.requires_grad} | {n for n, _ in like.named_buffers()}
    return {k: v for k, v in module.state_dict().items() if k in keep}


def load_trainable_state(module: nn.Module, state: dict, what: str, like: nn.Module | None = None) -> None:
    expected = set(trainable_state(module, like))
    if set(state) != expected:
        raise ValueError(f"checkpoint {what} does not match the model: missing "
                         f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}")
    module.load_state_dict(state, strict=False)


class TsvLog:
    """Per-step curves as TSV; on resume rows after the checkpoint are dropped (they get redone)."""

    def __init__(self, path: Path, columns: list[str], keep_until: int | None):
        self.path, self.columns = path, columns
        rows = []
        if keep_until is not None and path.exists():
            lines = path.read_text().splitlines()
            if lines and lines[0].split("\t") == columns:
                rows = [line for line in lines[1:] if line and int(line.split("\t")[0]) <= keep_until]
        path.write_text("\t".join(columns) + "\n" + "".join(r + "\n" for r in rows))

    def write(self, values: dict) -> None:
        cells = [values[c] for c in self.columns]
        with self.path.open("a") as f:
            f.write("\t".join(f"{c:.6g}" if isinstance(c, float) else str(c) for c in cells) + "\n")


class _LineStream:
    """tqdm target for log files: each refresh becomes its own line instead of a carriage return."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self):
        self.stream.flush()


def _describe(data) -> str:
    return type(data).__name__ if isinstance(data, torch.utils.data.Dataset) else str(data)


def _versions() -> dict:
    import diffusers
    import peft
    import transformers

    return {"coda": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "peft": peft.__version__,
            "transformers": transformers.__version__}


# ---------------------------------------------------------------------------- losses of one micro-batch
def latent_losses(tokenizer, batch, cfg: TrainConfig, noise_seed: int, autocast):
    mean, logvar = batch
    z = posterior_latent(tokenizer.vae, mean, logvar, tokenizer.posterior, noise_seed)
    with autocast:
        out = tokenizer.quantizer(z)
    parts = {"latent_mse": mse(out.f_hat.float(), z), "vq": out.vq_loss, "entropy": out.entropy_loss}
    total = (cfg.latent_mse_weight * parts["latent_mse"] + cfg.vq_weight * parts["vq"]
             + cfg.entropy_weight * parts["entropy"])
    return total, parts, out.indices


def image_losses(tokenizer, disc, lpips, x, cfg: TrainConfig, noise_seed: int, ramp: float,
                 adaptive_target: str, autocast):
    """Generator loss (method.md section 4) and the reconstruction, for the discriminator step."""
    vae = tokenizer.vae
    encoder_trains = any(p.requires_grad for p in vae.autoencoder.encoder.parameters())
    with autocast:
        with torch.set_grad_enabled(encoder_trains):  # a frozen encoder needs no graph
            posterior = vae.encode(x)
        z = posterior_latent(vae, posterior.mean.float(), posterior.logvar.float(), tokenizer.posterior,
                             noise_seed)
        out = tokenizer.quantizer(z)
        x_hat = vae.decode(out.f_hat).float()
    parts = {"l1": l1(x_hat, x), "mse": mse(x_hat, x)}
    parts["lpips"] = lpips(x_hat, x) if lpips is not None else x_hat.new_zeros(())
    nll = cfg.l1_weight * parts["l1"] + cfg.mse_weight * parts["mse"] + cfg.lpips_weight * parts["lpips"]
    total = nll + cfg.vq_weight * out.vq_loss + cfg.entropy_weight * out.entropy_loss
    parts.update(nll=nll, vq=out.vq_loss, entropy=out.entropy_loss)
    if disc is not None:
        with autocast:
            logits_fake = disc(x_hat).float()
        parts["gan_g"] = hinge_g_loss(logits_fake)
        last = out.f_hat if adaptive_target == "decoder_input" else _lora_up(tokenizer, adaptive_target)
        weight = adaptive_weight(nll, parts["gan_g"], last, cfg.adaptive_weight_max) * cfg.gan_weight
        parts["adaptive_weight"] = weight
        total = total + ramp * weight * parts["gan_g"]
    return total, parts, out.indices, x_hat


def _lora_up(tokenizer, variant: str):
    from ..lora import adaptive_weight_layer

    return adaptive_weight_layer(tokenizer.vae, variant)


# ---------------------------------------------------------------------------- save / resume
def save_training_state(path: Path, *, step, experiment, global_batch, tokenizer, ema, disc, opt_g, opt_d):
    """The one place that writes a checkpoint."""
    state = {
        "format": 1, "step": step, "experiment": experiment, "global_batch": global_batch,
        "model": trainable_state(tokenizer), "ema": trainable_state(ema.model, like=tokenizer),
        "opt_g": opt_g.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []},
    }
    if disc is not None:
        state.update(disc=trainable_state(disc), opt_d=opt_d.state_dict())
    save_checkpoint(path, state)


def resume_training_state(path: Path, *, experiment, global_batch, tokenizer, ema, disc, opt_g, opt_d) -> int:
    """The one place that reads a checkpoint back; returns the step to continue from."""
    state = load_checkpoint(path)
    _check_same_run(state["experiment"], experiment, path)
    if state["global_batch"] != global_batch:
        raise ValueError(f"{path} was written with global batch {state['global_batch']}, this run has "
                         f"{global_batch} (batch_size x grad_accum x processes); keep it equal to resume")
    load_trainable_state(tokenizer, state["model"], "model")
    load_trainable_state(ema.model, state["ema"], "ema", like=tokenizer)
    opt_g.load_state_dict(state["opt_g"])
    if disc is not None:
        load_trainable_state(disc, state["disc"], "discriminator")
        opt_d.load_state_dict(state["opt_d"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"])


def changed_settings(saved: dict, current: dict) -> list[str]:
    """Settings that differ between a checkpoint's run and this one (bookkeeping and speed flags aside)."""
    def flat(experiment):
        values = {k: v for k, v in experiment.items() if k != "train"}
        values.update({f"train.{k}": v for k, v in experiment.get("train", {}).items() if k not in RESUMABLE_CHANGES})
        return values

    old, new = flat(saved), flat(current)
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def _check_same_run(saved: dict, current: dict, path: Path) -> None:
    if changed := changed_settings(saved, current):
        raise ValueError(f"{path} belongs to a run with other settings (changed: {', '.join(changed)})")


def set_aside_other_run(checkpoint: Path, experiment: dict, info) -> bool:
    """A checkpoint from other settings (a parameter changed since) is not resumed but kept:
    rank 0 moves it to checkpoints/superseded/ and the run starts over. Returns True if moved."""
    changed = changed_settings(load_checkpoint(checkpoint)["experiment"], experiment)
    if info.world_size > 1:
        torch.distributed.barrier()  # every rank has read it before rank 0 moves it
    if not changed:
        return False
    if info.is_main:
        target = checkpoint.parent / "superseded" / time.strftime("%Y%m%d-%H%M%S")
        target.mkdir(parents=True, exist_ok=True)
        os.replace(checkpoint, target / checkpoint.name)
        print(f"train: settings changed since {checkpoint} ({', '.join(changed)}); starting over, "
              f"the old checkpoint is kept in {target}", file=sys.stderr)
    if info.world_size > 1:
        torch.distributed.barrier()
    return True


def warm_up_quantizer(experiment: dict, cfg: TrainConfig, vae_dir, out_dir: Path, latents) -> dict:
    """Optional compute saver (off by default): train the quantizer alone on cached latents first.

    The paper trains quantizer and LoRA jointly from scratch. At small budgets the images-mode
    run is too short for the codebook to settle, so ``quantizer_warmup_steps`` first runs that many
    latents-mode steps (frozen VAE, as the ``ablate_attn`` rung) in ``out_dir/quantizer_warmup``,
    itself resumable, and the images-mode run starts from its EMA quantizer.
    """
    from ..tokenizer import Tokenizer

    if latents is None:
        raise ValueError("train.quantizer_warmup_steps needs the latent cache (--cache / latents=)")
    warm_train = {**experiment["train"], "data_mode": "latents", "max_steps": cfg.quantizer_warmup_steps,
                  "quantizer_warmup_steps": 0}
    warm_dir = out_dir / "quantizer_warmup"
    train({**experiment, "lora": None, "train": warm_train}, vae_dir, warm_dir, latents=latents)
    return Tokenizer.from_pretrained(warm_dir / "tokenizer").quantizer.state_dict()


# ---------------------------------------------------------------------------- the loop
def train(experiment: dict, vae_dir, out_dir, *, images=None, latents=None, on_step=None) -> TrainResult:
    """Train one experiment into ``out_dir``; rerunning the same call resumes from its checkpoint.

    experiment: {quantizer: {...}, lora: {...} | None, posterior: sample | mean, train: {...}}.
    on_step(step, losses): called after each optimizer step (tests use it to kill the process).
    """
    cfg = TrainConfig.from_dict(experiment.get("train"))
    experiment = {**experiment, "train": cfg.to_dict()}  # defaults filled in: what run.json records
    warm_quantizer = None
    if cfg.quantizer_warmup_steps and cfg.data_mode == "images":
        warm_quantizer = warm_up_quantizer(experiment, cfg, vae_dir, Path(out_dir), latents)
    use_disc = cfg.data_mode == "images" and cfg.gan_weight > 0
    if use_disc:  # before any data loading: a missing DINO file must fail right away
        check_discriminator(cfg.discriminator_kind, cfg.dino_weights)
    info = distributed.setup(cfg.device)
    out_dir = Path(out_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    device = info.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format

    # --- data
    dataset = open_dataset(cfg, images, latents)
    global_batch = cfg.batch_size * cfg.grad_accum * info.world_size
    steps_per_epoch = len(dataset) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"the training set has {len(dataset)} items, fewer than one global batch of "
                         f"{global_batch} (batch_size x grad_accum x processes)")
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)

    # --- models (same seed on every rank: identical initial weights)
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(experiment, vae_dir, cfg.data_mode).to(device).train()
    adaptive_target = adaptive_weight_target(tokenizer, cfg, experiment) if use_disc else None
    disc = lpips = None
    if use_disc:
        disc = build_discriminator(cfg.discriminator_kind, dino_weights=cfg.dino_weights,
                                   channels=cfg.patchgan_channels, n_layers=cfg.patchgan_layers).to(device).train()
    if cfg.data_mode == "images" and cfg.lpips_weight > 0:
        lpips = LPIPSLoss(cfg.lpips_net).to(device)
    for module in (tokenizer.vae, disc, lpips):
        if module is not None:
            module.to(memory_format=memory_format)
    g_params = [p for p in tokenizer.parameters() if p.requires_grad]
    d_params = [p for p in disc.parameters() if p.requires_grad] if disc is not None else []
    opt_g = torch.optim.AdamW(g_params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    opt_d = (torch.optim.AdamW(d_params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.disc_weight_decay)
             if disc is not None else None)
    if warm_quantizer is not None:  # before the EMA copy; a resumed checkpoint overrides it below
        tokenizer.quantizer.load_state_dict(warm_quantizer)
    ema = EMA(tokenizer, cfg.ema_max_decay, cfg.ema_start_epoch)

    # --- resume
    checkpoint = out_dir / CHECKPOINT
    parts = dict(experiment=experiment, global_batch=global_batch, tokenizer=tokenizer, ema=ema,
                 disc=disc, opt_g=opt_g, opt_d=opt_d)
    resumable = checkpoint.exists() and not set_aside_other_run(checkpoint, experiment, info)
    start_step = resume_training_state(checkpoint, **parts) if resumable else 0
    for module in (tokenizer, disc):
        if module is not None:
            distributed.broadcast_state(module, info)
    if cfg.compile:  # after the EMA copy and the state loading: compiled modules keep their names
        for module in (tokenizer.vae.autoencoder.encoder, tokenizer.vae.autoencoder.decoder, disc):
            if module is not None:
                module.compile()

    # --- outputs: run record and curves (rank 0)
    loss_names = (["latent_mse", "vq", "entropy"] if cfg.data_mode == "latents" else
                  ["l1", "mse", "lpips", "nll", "vq", "entropy"]
                  + (["gan_g", "adaptive_weight", "d_loss", "logits_real", "logits_fake"] if disc else []))
    columns = (["step", "epoch", "lr", "loss"] + loss_names
               + ["ramp", "grad_norm", "codes_used", "images_per_s"] + (["d_grad_norm"] if disc else []))
    log = None
    if info.is_main:
        log = TsvLog(out_dir / LOG, columns, keep_until=start_step if start_step else None)
        previous = json.loads((out_dir / RUN).read_text()) if start_step and (out_dir / RUN).exists() else {}
        run = {"config": experiment, "data_mode": cfg.data_mode, "posterior": tokenizer.posterior,
               "discriminator": disc.config if disc is not None else None,
               "adaptive_weight_target": adaptive_target, "lpips": cfg.lpips_net if lpips else None,
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "world_size": info.world_size, "global_batch": global_batch,
               "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
               "vae_dir": str(vae_dir), "data": _describe(latents if cfg.data_mode == "latents" else images),
               "versions": _versions(), "resumed_from": previous.get("resumed_from", []) + (
                   [start_step] if start_step else []), "status": "running"}
        (out_dir / RUN).write_text(json.dumps(run, indent=2) + "\n")

    # --- loop
    n_micro = cfg.grad_accum * info.world_size
    stream = micro_batch_stream(dataset, cfg, info, start_step, steps_per_epoch)
    interactive = sys.stderr.isatty()
    bar = tqdm(total=total_steps, initial=start_step, disable=not info.is_main, unit="step",
               mininterval=cfg.progress_interval, ascii=not interactive, dynamic_ncols=interactive,
               file=sys.stderr if interactive else _LineStream(sys.stderr))
    step = saved_step = start_step
    while step < total_steps:
        t0 = time.perf_counter()
        epoch = step // steps_per_epoch
        lr = learning_rate(step, total_steps, cfg.lr, cfg.warmup_steps)
        ramp = gan_ramp(step, total_steps)
        for opt in (opt_g, opt_d):
            if opt is not None:
                opt.zero_grad(set_to_none=True)
                for group in opt.param_groups:
                    group["lr"] = lr
        sums = torch.zeros(len(loss_names) + 1, dtype=torch.float64)
        usage = torch.zeros(tokenizer.quantizer.codebook_size, dtype=torch.float64, device=device)
        for k in range(cfg.grad_accum):
            batch = next(stream)
            noise_seed = _mix(cfg.seed, step, k * info.world_size + info.rank)
            if cfg.data_mode == "latents":
                total, losses, indices = latent_losses(tokenizer, [b.to(device) for b in batch], cfg,
                                                       noise_seed, autocast)
            else:
                x = batch.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                if disc is not None:
                    for p in d_params:
                        p.requires_grad_(False)
                total, losses, indices, x_hat = image_losses(tokenizer, disc, lpips, x, cfg, noise_seed, ramp,
                                                             adaptive_target, autocast)
            (total / n_micro).backward()
            if disc is not None:  # discriminator step on the same micro-batch
                for p in d_params:
                    p.requires_grad_(True)
                with autocast:
                    logits_real, logits_fake = disc(x).float(), disc(x_hat.detach()).float()
                losses["d_loss"] = hinge_d_loss(logits_real, logits_fake)
                losses.update(logits_real=logits_real.mean().detach(), logits_fake=logits_fake.mean().detach())
                (losses["d_loss"] / n_micro).backward()
            sums += torch.tensor([float(total.detach())] + [float(losses[n].detach()) for n in loss_names],
                                 dtype=torch.float64)
            for idx in indices:
                usage += torch.bincount(idx.reshape(-1), minlength=usage.numel()).to(usage)
        sums = distributed.sum_tensor(sums.to(device), info).cpu() / n_micro
        usage = distributed.sum_tensor(usage, info)
        values = dict(zip(["loss"] + loss_names, sums.tolist()))
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if bad:  # name the component, not just the total
            name = next((n for n in bad if n != "loss"), "loss")
            _stop(f"loss '{name}' is {values[name]}", step, checkpoint, saved_step, info)

        distributed.sum_gradients(g_params, info)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(g_params, cfg.grad_clip))
        d_grad_norm = 0.0
        if disc is not None:
            distributed.sum_gradients(d_params, info)
            d_grad_norm = float(torch.nn.utils.clip_grad_norm_(d_params, cfg.grad_clip))
        for which, norm in (("generator", grad_norm), ("discriminator", d_grad_norm)):
            if not math.isfinite(norm):
                _stop(f"the {which} gradient norm is {norm}", step, checkpoint, saved_step, info)
        opt_g.step()
        if disc is not None:
            opt_d.step()
            distributed.broadcast_state(disc, info, buffers_only=True)
        ema.update(tokenizer, step, epoch)
        step += 1

        seconds = time.perf_counter() - t0
        values.update(step=step, epoch=epoch, lr=lr, ramp=ramp, grad_norm=grad_norm, d_grad_norm=d_grad_norm,
                      codes_used=float((usage > 0).double().mean()), images_per_s=global_batch / seconds)
        if info.is_main:
            log.write(values)
            bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{values['images_per_s']:.1f}", refresh=False)
            bar.update(1)
        if step % cfg.checkpoint_every == 0 or step == total_steps:
            distributed.check_in_sync(tokenizer, info, "generator")
            if disc is not None:
                distributed.check_in_sync(disc, info, "discriminator")
            if info.is_main:
                save_training_state(checkpoint, step=step, **parts)
            saved_step = step
        if on_step is not None:
            on_step(step, values)
    bar.close()

    # --- final outputs: the EMA tokenizer (and optionally the live one)
    if info.is_main:
        ema.model.save_pretrained(out_dir / "tokenizer")
        if cfg.save_live:
            tokenizer.save_pretrained(out_dir / "tokenizer_live")
        run = json.loads((out_dir / RUN).read_text())
        run.update(status="finished", steps=step)
        (out_dir / RUN).write_text(json.dumps(run, indent=2) + "\n")
    distributed.teardown(info)
    return TrainResult(out_dir, step, tokenizer, ema.model, disc)


def _stop(problem: str, step: int, checkpoint: Path, saved_step: int, info) -> None:
    kept = (f"the last good checkpoint {checkpoint} (step {saved_step}) is kept" if saved_step
            else "no checkpoint had been written yet")
    message = f"step {step + 1}: {problem}; training stopped before the optimizer step, {kept}"
    if info.is_main:
        print(f"error: {message}", file=sys.stderr)
    raise NonFiniteLossError(message)

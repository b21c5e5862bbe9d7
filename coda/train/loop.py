"""The training loop for every experiment kind (docs/method.md sections 4-5), top to bottom.

``latents`` mode: frozen VAE, cached posterior moments are sampled, the quantizer learns to
reconstruct the latent. ``images`` mode: encoder (LoRA or frozen) -> quantizer -> decoder with the
full generator loss, and a discriminator step on the same micro-batch. The losses are
``coda.losses.TokenizerLoss``; checkpoints ``checkpoint.py``; curves and run.json ``log.py``.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..artifacts import CHECKPOINTS, TOKENIZER_DIR, TOKENIZER_LIVE_DIR, TRAIN_LOG
from ..discriminators import build_discriminator, synchronise_batchnorm
from ..ema import EMA
from ..errors import UserError
from ..losses import LPIPSLoss, TokenizerLoss, gan_ramp
from ..schedule import learning_rate
from . import distributed
from .checkpoint import resume_training_state, save_training_state
from .config import TrainConfig
from .inputs import build_tokenizer, micro_batch_stream, mix_seeds
from .log import TsvLog, finish_run_record, progress_bar, publish_log, start_run_record

class NonFiniteLossError(UserError, RuntimeError):
    """A loss or gradient became NaN/inf; training stopped before the optimizer step."""

    exit_status = 3  # apart from a bad input: lower the learning rate, or resume from an earlier checkpoint


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    tokenizer: nn.Module          # live weights
    ema_tokenizer: nn.Module      # EMA weights: what tokenizer/ holds and evaluation uses
    discriminator: nn.Module | None


def fit(cfg: TrainConfig, experiment: dict, vae_dir, out_dir, dataset, info, *, data: str,
        init_quantizer: dict | None = None, on_step=None, earlier_phases: list | None = None) -> TrainResult:
    """One run into ``out_dir``, resumed from its checkpoint if it has one.

    experiment: with ``cfg``'s values as its train block (what run.json and the checkpoint record);
    data: what run.json names as the training data; init_quantizer: a quantizer state to start from;
    earlier_phases: (phase, live log) of the runs before this one in the same stage, which the
    published train_log.tsv holds first (coda/train/log.py).
    """
    out_dir = Path(out_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    device = info.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    # The recipe fixes the global batch (train.global_batch), so the accumulation follows from the
    # number of processes and 1, 4 or 8 GPUs run the same steps; ``experiment`` keeps the setting.
    cfg = dataclasses.replace(cfg, grad_accum=cfg.accumulation(info.world_size))
    global_batch = cfg.batch_size * cfg.grad_accum * info.world_size
    steps_per_epoch = len(dataset) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"the training set has {len(dataset)} items, fewer than one global batch of "
                         f"{global_batch} (batch_size x grad_accum x processes)")
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)

    # --- models (same seed on every rank: identical initial weights)
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(experiment, vae_dir, cfg.data_mode).to(device).train()
    images = cfg.data_mode == "images"
    disc = lpips = None
    if images and cfg.gan_weight > 0:
        disc = build_discriminator(cfg.discriminator_kind, dino_weights=cfg.dino_weights,
                                   channels=cfg.patchgan_channels, n_layers=cfg.patchgan_layers,
                                   dino_view=cfg.dino_view, dino_heads=cfg.dino_heads)
        disc = synchronise_batchnorm(disc, info.world_size, device).to(device).train()
    if images and cfg.lpips_weight > 0:
        lpips = LPIPSLoss(cfg.lpips_net).to(device)
    for module in (tokenizer.vae, disc, lpips):
        if module is not None:
            module.to(memory_format=memory_format)
    objective = TokenizerLoss(tokenizer, cfg, disc, lpips, autocast, variant=experiment.get("variant"))
    g_params, d_params = [p for p in tokenizer.parameters() if p.requires_grad], objective.d_params
    opt_g = torch.optim.AdamW(g_params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    opt_d = (torch.optim.AdamW(d_params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.disc_weight_decay)
             if disc is not None else None)
    if init_quantizer is not None:  # before the EMA copy; a resumed checkpoint overrides it below
        tokenizer.quantizer.load_state_dict(init_quantizer)
    ema = EMA(tokenizer, start_epoch=cfg.ema_start_epoch)

    # --- resume
    checkpoints = out_dir / CHECKPOINTS
    state = dict(experiment=experiment, global_batch=global_batch, tokenizer=tokenizer, ema=ema,
                 disc=disc, opt_g=opt_g, opt_d=opt_d)
    start_step = resume_training_state(checkpoints, info, **state)
    for module in (tokenizer, disc):
        if module is not None:
            distributed.broadcast_state(module, info)
    if cfg.compile:  # after the EMA copy and the state loading: compiled modules keep their names
        for module in (tokenizer.vae.autoencoder.encoder, tokenizer.vae.autoencoder.decoder, disc):
            if module is not None:
                module.compile()

    # --- curves and run record (rank 0)
    columns = (["step", "epoch", "lr", "loss"] + objective.names
               + ["ramp", "grad_norm", "codes_used", "images_per_s"] + (["d_grad_norm"] if disc else []))
    if info.is_main:
        log = TsvLog(checkpoints / TRAIN_LOG, columns, keep_until=start_step or None)  # kept across reruns
        start_run_record(out_dir, {
            "config": experiment, "data_mode": cfg.data_mode, "posterior": tokenizer.posterior,
            "discriminator": disc.config if disc is not None else None,
            "adaptive_weight_target": objective.adaptive_target,
            "lpips": cfg.lpips_net if lpips is not None else None,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "world_size": info.world_size, "global_batch": global_batch, "grad_accum": cfg.grad_accum,
            "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps, "vae_dir": str(vae_dir), "data": data}, start_step)

    # --- the loop
    n_micro = cfg.grad_accum * info.world_size
    stream = micro_batch_stream(dataset, cfg, info, start_step, steps_per_epoch, memory_format)
    bar = progress_bar(total_steps, start_step, info.is_main, cfg.progress_interval)
    step = saved_step = start_step
    while step < total_steps:
        t0 = time.perf_counter()
        epoch = step // steps_per_epoch
        lr = learning_rate(step, total_steps * cfg.lr_schedule_span, cfg.lr)  # span > 1: the release's longer cosine
        ramp = gan_ramp(step, total_steps)
        for opt in (opt_g, opt_d):
            if opt is not None:
                opt.zero_grad(set_to_none=True)
                for group in opt.param_groups:
                    group["lr"] = lr
        sums = torch.zeros(len(objective.names) + 1, dtype=torch.float64)
        usage = torch.zeros(tokenizer.quantizer.codebook_size, dtype=torch.float64, device=device)
        for k in range(cfg.grad_accum):
            batch = next(stream)
            total, losses, indices, x_hat = objective(batch, mix_seeds(cfg.seed, step, k * info.world_size + info.rank),
                                                      ramp)
            loss = total
            if disc is not None:  # discriminator step on the same micro-batch
                # One backward: under disc_objective release D's gradient of a micro-batch (hinge +
                # the generator's GAN term) is summed before it joins the others, so splitting the
                # global batch over ranks sums the same numbers.
                loss = loss + objective.discriminator_loss(batch, x_hat, losses)
            (loss / n_micro).backward()
            sums += torch.tensor([float(total.detach())] + [float(losses[n].detach()) for n in objective.names],
                                 dtype=torch.float64)
            for idx in indices:
                usage += torch.bincount(idx.reshape(-1), minlength=usage.numel()).to(usage)
        sums = distributed.sum_tensor(sums.to(device), info).cpu() / n_micro
        usage = distributed.sum_tensor(usage, info)
        values = dict(zip(["loss"] + objective.names, sums.tolist()))
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if bad:  # name the component, not just the total
            name = next((n for n in bad if n != "loss"), "loss")
            _stop(f"loss '{name}' is {values[name]}", step, checkpoints, saved_step, info)

        distributed.sum_gradients(g_params, info)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(g_params, cfg.grad_clip))
        d_grad_norm = 0.0
        if disc is not None:
            distributed.sum_gradients(d_params, info)
            d_grad_norm = float(torch.nn.utils.clip_grad_norm_(d_params, cfg.grad_clip))
        for which, norm in (("generator", grad_norm), ("discriminator", d_grad_norm)):
            if not math.isfinite(norm):
                _stop(f"the {which} gradient norm is {norm}", step, checkpoints, saved_step, info)
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
                save_training_state(checkpoints, cfg.keep_checkpoints, step=step, **state)
            saved_step = step
        if on_step is not None:
            on_step(step, values)
    bar.close()

    # --- final outputs: the EMA tokenizer (and optionally the live one)
    if info.is_main:
        ema.model.save_pretrained(out_dir / TOKENIZER_DIR)
        if cfg.save_live:
            tokenizer.save_pretrained(out_dir / TOKENIZER_LIVE_DIR)
        publish_log(out_dir / TRAIN_LOG, [*(earlier_phases or []), (cfg.data_mode, checkpoints / TRAIN_LOG)])
        finish_run_record(out_dir, step)
    return TrainResult(out_dir, step, tokenizer, ema.model, disc)


def _stop(problem: str, step: int, checkpoints: Path, saved_step: int, info) -> None:
    kept = (f"the last good checkpoint (step {saved_step}) is kept in {checkpoints}" if saved_step
            else "no checkpoint had been written yet")
    message = f"step {step + 1}: {problem}; training stopped before the optimizer step, {kept}"
    if info.is_main:
        print(f"error: {message}", file=sys.stderr)
    raise NonFiniteLossError(message)

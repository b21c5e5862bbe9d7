"""Training the next-scale generator on token files, by VAR's recipe (FoundationVision/VAR
``train.py``, ``trainer.py``, ``utils/lr_control.py``; commit 78b9539) and the tokenizer trainer's
conventions (``coda/train``): a fixed global batch with accumulation, data parallel under torchrun
(``coda.train.distributed``), checkpoints that resume bit for bit, ``train_log.tsv`` and ``run.json``.

The recipe: AdamW (0.9, 0.95), weight decay 0.05 except on 1-D parameters, biases, the position
and level embeddings and the attention scales (VAR's ``filter_params``; the class embedding decays,
as in VAR); lr = base_lr x global batch / 256; VAR's ``lin0`` schedule (``coda.schedule.lin0_learning_rate``); gradient
clip 2.0; class dropout 0.1 (the label becomes the null class); cross-entropy weighted 1/L over all
L tokens, so a scale weighs its share of the tokens; optional bf16 autocast.

All randomness of a step is a function of (seed, step, micro-batch): the data order of an epoch
(``coda.train.inputs.micro_batch_stream``), the class dropout, and drop path (torch's global
generator, seeded per micro-batch). So a resumed run, or one split over ranks, computes what one
uninterrupted process computes.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..artifacts import TRAIN_LOG
from ..schedule import lin0_learning_rate
from ..train import distributed
from ..train.checkpoint import checkpoint_files, load_checkpoint, save_checkpoint
from ..train.inputs import micro_batch_stream, mix_seeds
from ..train.log import TsvLog, finish_run_record, progress_bar, start_run_record
from .model import NextScaleGenerator, drop_labels, recipe_for_depth

CHECKPOINTS = "checkpoints"
GENERATOR = "generator"
# VAR's filter_params: names (besides 1-D tensors and biases) trained without weight decay
NO_WEIGHT_DECAY = ("pos_start", "pos_scales", "level_emb", "log_scale")


def resumable(default):
    return field(default=default, metadata={"resumable": True})


@dataclass
class GeneratorSettings:
    """The ``generator:`` block: the model's size and its training. null = VAR's value for the depth
    (``recipe_for_depth``)."""
    # model (VAR-d16: depth 16, width 1024, 16 heads)
    depth: int = 16
    width: int = 1024
    heads: int = 16
    mlp_ratio: float = 4.0
    drop_path: float | None = None        # null: 0.1 x depth / 24 (build_vae_var)
    init_adaln_gamma: float | None = None  # null: 1e-3 (d16, d20), 1e-4 (d24), 1e-5 (d30)
    # length and batch (VAR's README, d16: 768 images, 200 epochs)
    batch_size: int = 32                  # per process and micro-batch
    global_batch: int = 768
    epochs: float = 200
    max_steps: int | None = None          # overrides epochs
    flipped: bool = True                  # also train on the flipped copies (tokenize.flip)
    seed: int = 0
    # optimisation
    base_lr: float | None = None          # per 256 images; null: 1e-4 (d16, d20), 8e-5 (d24, d30)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    warmup_epochs: float | None = None    # null: 1/50 of the run (VAR: epochs / 50)
    final_lr_fraction: float | None = None  # null: 0.1 (d16, d20), 0.01 (d24, d30)
    grad_clip: float = 2.0
    class_dropout: float = 0.1
    label_smoothing: float = 0.0
    # bookkeeping and speed
    checkpoint_every: int = resumable(1000)
    keep_checkpoints: int = resumable(2)
    progress_interval: float = resumable(30.0)
    num_workers: int = resumable(0)
    device: str = resumable("auto")
    bf16: bool = resumable(False)

    def __post_init__(self):
        self.betas = tuple(self.betas)
        recipe = recipe_for_depth(self.depth)
        for key, value in recipe.items():
            if getattr(self, key, 0) is None:
                setattr(self, key, value)
        checks = {"depth": self.depth >= 1, "width": self.width >= 1,
                  "heads": self.heads >= 1 and self.width % self.heads == 0,
                  "batch_size": self.batch_size >= 1, "global_batch": self.global_batch >= 1,
                  "epochs": self.max_steps is not None or self.epochs > 0,
                  "max_steps": self.max_steps is None or self.max_steps >= 1,
                  "class_dropout": 0 <= self.class_dropout < 1, "grad_clip": self.grad_clip > 0,
                  "checkpoint_every": self.checkpoint_every >= 1, "keep_checkpoints": self.keep_checkpoints >= 1,
                  "base_lr": self.base_lr > 0, "final_lr_fraction": 0 <= self.final_lr_fraction <= 1}
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid generator.{key}: {getattr(self, key)!r}")

    @classmethod
    def from_dict(cls, values: dict | None) -> "GeneratorSettings":
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values or {}:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
                raise ValueError(f"unknown key '{key}' in the generator block{hint}")
        return cls(**(values or {}))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "betas": list(self.betas)}

    def accumulation(self, world_size: int) -> int:
        per_round = self.batch_size * world_size
        if self.global_batch % per_round:
            raise ValueError(f"generator.global_batch {self.global_batch} is not a multiple of batch_size x "
                             f"processes = {self.batch_size} x {world_size}")
        return self.global_batch // per_round


RESUMABLE_CHANGES = frozenset(f.name for f in dataclasses.fields(GeneratorSettings) if f.metadata.get("resumable"))


def parameter_groups(model: NextScaleGenerator, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        off = p.ndim <= 1 or name.endswith("bias") or any(key in name for key in NO_WEIGHT_DECAY)
        (no_decay if off else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class FlatTokens(Dataset):
    """Items (per-scale index maps, label) as one LongTensor: the L indices, then the label (one
    tensor per item, so the shared micro-batch stream collates them)."""

    def __init__(self, items: Dataset):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        indices, label = self.items[index]
        return torch.cat([level.reshape(-1) for level in indices] + [torch.as_tensor(label).reshape(1)]).long()


def split_flat(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return batch[:, :-1], batch[:, -1]


def unflatten(tokens: torch.Tensor, scales) -> list[torch.Tensor]:
    """B x L indices -> one B x s x s map per scale."""
    out, begin = [], 0
    for side in scales:
        out.append(tokens[:, begin:begin + side * side].reshape(-1, side, side))
        begin += side * side
    return out


@dataclass
class GeneratorRun:
    out_dir: Path
    step: int
    model: NextScaleGenerator


def fit(settings: GeneratorSettings, model: NextScaleGenerator, dataset: Dataset, out_dir, info=None, *,
        record: dict | None = None, on_step=None) -> GeneratorRun:
    """Train ``model`` (built, its value table set) on ``dataset`` (items: (index maps, label)) into
    ``out_dir``, resumed from its newest checkpoint if there is one. Writes ``generator/``,
    ``checkpoints/``, ``train_log.tsv`` and ``run.json``. ``on_step(step, values)`` after each step."""
    out_dir = Path(out_dir)
    own_group = info is None
    info = info or distributed.setup(settings.device)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    device = info.device
    accum = settings.accumulation(info.world_size)
    global_batch = settings.global_batch
    steps_per_epoch = len(dataset) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"the token set has {len(dataset)} items, fewer than one global batch of {global_batch}")
    total_steps = settings.max_steps or math.ceil(settings.epochs * steps_per_epoch)
    warmup_steps = total_steps / 50 if settings.warmup_epochs is None else settings.warmup_epochs * steps_per_epoch
    peak_lr = settings.base_lr * global_batch / 256
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if settings.bf16 else nullcontext()
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, settings.weight_decay), lr=peak_lr, betas=settings.betas)
    params = [p for p in model.parameters() if p.requires_grad]
    experiment = {"generator": settings.to_dict(), "model": model.config}

    checkpoints = out_dir / CHECKPOINTS
    start_step = _resume(checkpoints, experiment, global_batch, model, optimizer, info)
    distributed.broadcast_state(model, info)

    scales = model.scales
    names = [f"s{side}" for side in scales]
    columns = (["step", "epoch", "lr", "loss", "accuracy", "grad_norm", "images_per_s"]
               + [f"loss_{n}" for n in names] + [f"acc_{n}" for n in names])
    if info.is_main:
        log = TsvLog(out_dir / TRAIN_LOG, columns, keep_until=start_step or None)
        start_run_record(out_dir, {**(record or {}), "config": experiment, "world_size": info.world_size,
                                   "global_batch": global_batch, "grad_accum": accum, "peak_lr": peak_lr,
                                   "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                                   "parameters": sum(p.numel() for p in params),
                                   "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"},
                         start_step)

    cfg = _StreamSettings(settings.batch_size, accum, settings.seed, settings.num_workers)
    stream = micro_batch_stream(FlatTokens(dataset), cfg, info, start_step, steps_per_epoch, torch.contiguous_format)
    level_of = model.levels
    n_micro = accum * info.world_size
    bar = progress_bar(total_steps, start_step, info.is_main, settings.progress_interval)
    step = start_step
    while step < total_steps:
        t0 = time.perf_counter()
        lr = lin0_learning_rate(step, total_steps, warmup_steps, peak_lr, settings.final_lr_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        # per scale: summed CE, correct predictions, token count
        sums = torch.zeros(3, len(scales), dtype=torch.float64, device=device)
        for k in range(accum):
            tokens, labels = split_flat(next(stream))
            micro = k * info.world_size + info.rank  # this micro-batch's place in the global batch
            generator = torch.Generator(device).manual_seed(mix_seeds(settings.seed, step, micro))
            labels = drop_labels(labels, settings.class_dropout, model.num_classes, generator)
            torch.manual_seed(mix_seeds(settings.seed, step, micro, 1))  # drop path: per micro-batch too
            with torch.no_grad():
                inputs = model.inputs.teacher_forcing(unflatten(tokens, scales))
            with autocast:
                logits = model(labels, inputs)
            ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens.reshape(-1),
                                 reduction="none", label_smoothing=settings.label_smoothing).view(tokens.shape)
            loss = ce.mean()  # VAR: each token weighted 1/L, summed, averaged over the batch
            (loss / n_micro).backward()
            with torch.no_grad():
                correct = (logits.argmax(-1) == tokens).double()
                sums[0].index_add_(0, level_of, ce.detach().double().sum(0))
                sums[1].index_add_(0, level_of, correct.sum(0))
                sums[2].index_add_(0, level_of, torch.full_like(correct[0], tokens.shape[0]))
        sums = distributed.sum_tensor(sums, info).cpu()
        loss_value = float(sums[0].sum() / sums[2].sum())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"step {step + 1}: the generator's loss is {loss_value}; training stopped")
        distributed.sum_gradients(params, info)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, settings.grad_clip))
        optimizer.step()
        step += 1

        values = {"step": step, "epoch": (step - 1) // steps_per_epoch, "lr": lr, "loss": loss_value,
                  "accuracy": float(sums[1].sum() / sums[2].sum()), "grad_norm": grad_norm,
                  "images_per_s": global_batch / (time.perf_counter() - t0)}
        values.update({f"loss_{n}": float(sums[0, i] / sums[2, i]) for i, n in enumerate(names)})
        values.update({f"acc_{n}": float(sums[1, i] / sums[2, i]) for i, n in enumerate(names)})
        if info.is_main:
            log.write(values)
            bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{values['images_per_s']:.1f}", refresh=False)
            bar.update(1)
        if step % settings.checkpoint_every == 0 or step == total_steps:
            distributed.check_in_sync(model, info, "generator")
            if info.is_main:
                _save(checkpoints, settings.keep_checkpoints, step, experiment, global_batch, model, optimizer)
        if on_step is not None:
            on_step(step, values)
    bar.close()
    if info.is_main:
        model.eval().save_pretrained(out_dir / GENERATOR)
        finish_run_record(out_dir, step)
    if own_group:
        distributed.teardown(info)
    return GeneratorRun(out_dir, step, model)


@dataclass
class _StreamSettings:
    """What ``micro_batch_stream`` reads of a run's settings."""
    batch_size: int
    grad_accum: int
    seed: int
    num_workers: int


def _save(directory: Path, keep: int, step: int, experiment: dict, global_batch: int, model, optimizer) -> None:
    state = {"format": 1, "step": step, "experiment": experiment, "global_batch": global_batch,
             "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "rng": {"torch": torch.get_rng_state(),
                     "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []}}
    save_checkpoint(Path(directory) / f"step-{step:08d}.safetensors", state)
    for old in checkpoint_files(directory)[keep:]:
        old.unlink()


def _resume(directory: Path, experiment: dict, global_batch: int, model, optimizer, info) -> int:
    """The newest readable checkpoint's step (0: none); one of other settings is refused with a message."""
    from ..files import UnreadableFileError

    for path in checkpoint_files(directory):
        try:
            state = load_checkpoint(path)
        except UnreadableFileError as error:
            if info.is_main:
                print(f"train-generator: warning: {error}", file=sys.stderr)
            continue
        changed = _changed(state["experiment"], experiment)
        if changed:
            raise ValueError(f"{path} was written with other settings ({', '.join(changed)}); to start over, "
                             f"move or delete {directory}")
        if state["global_batch"] != global_batch:
            raise ValueError(f"{path} was written with global batch {state['global_batch']}, this run has "
                             f"{global_batch}; keep it equal to resume")
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        return int(state["step"])
    return 0


def _changed(saved: dict, current: dict) -> list[str]:
    def flat(experiment):
        values = {f"generator.{k}": v for k, v in experiment["generator"].items() if k not in RESUMABLE_CHANGES}
        values.update({f"model.{k}": v for k, v in experiment["model"].items() if k != "coda_version"})
        return values

    old, new = flat(saved), flat(current)
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def build_generator(settings: GeneratorSettings, *, num_classes: int, scales, code_values: torch.Tensor,
                    tokenizer_sha256: str, class_names: list[str] | None = None) -> NextScaleGenerator:
    """A freshly initialised generator (seeded: the same on every rank) holding the tokenizer's value table."""
    torch.manual_seed(settings.seed)
    model = NextScaleGenerator(num_classes=num_classes, codebook_size=code_values.shape[0],
                               code_dim=code_values.shape[1], scales=scales, depth=settings.depth,
                               width=settings.width, heads=settings.heads, mlp_ratio=settings.mlp_ratio,
                               drop_path=settings.drop_path, class_names=class_names)
    model.init_weights(init_adaln_gamma=settings.init_adaln_gamma)
    model.set_code_values(code_values, tokenizer_sha256)
    return model

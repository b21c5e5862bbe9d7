"""``TrainConfig``: the ``train:`` block of an experiment, with the method's defaults.

This dataclass is the one list of train settings: the schema's ``$defs/train`` properties name the
same keys (tests/test_train_units.py checks it), and a setting marked ``resumable`` may change
between a run and its resumption (bookkeeping and speed, never what is computed). No torch here:
the input check (coda/external_inputs.py) reads these defaults before any stage runs. The DINO options
(``dino_view``, ``dino_heads``) are checked by ``coda.discriminators.check_discriminator``, beside
the discriminator that defines them.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field

from ..config import ParamsError

DATA_MODES = ("images", "latents")
DISCRIMINATORS = ("auto", "patchgan", "dino")
DISC_OBJECTIVES = ("release", "hinge")


def resumable(default):
    return field(default=default, metadata={"resumable": True})


@dataclass
class TrainConfig:
    # data and length
    data_mode: str = "images"           # images: encoder -> quantizer -> decoder; latents: cached posteriors
    batch_size: int = 16                # per process and micro-batch
    grad_accum: int = 4                 # micro-batches per optimizer step (when global_batch is null)
    global_batch: int | None = None     # images per optimizer step over all processes: accumulation
                                        # = global_batch / (batch_size x processes); null: batch_size
                                        # x grad_accum x processes
    epochs: float = 10                  # run length when max_steps is unset
    max_steps: int | None = None        # overrides epochs
    seed: int = 42
    # optimisation (docs/method.md section 5)
    lr: float = 5e-4
    lr_schedule_span: int = 1           # the cosine spans this many runs: 1 reaches zero at the last step;
                                        # the release's 8-process launch spans 8 (docs/method.md section 5)
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.005         # generator: LoRA + quantizer
    disc_weight_decay: float = 0.0005
    grad_clip: float = 10.0
    ema_start_epoch: int = 4            # before it the EMA copies the live weights
    # loss weights (docs/method.md section 4)
    l1_weight: float = 0.2
    mse_weight: float = 1.0
    lpips_weight: float = 1.0
    lpips_net: str = "vgg"
    gan_weight: float = 1.0
    vq_weight: float = 1.0
    entropy_weight: float = 0.05
    quantizer_warmup_steps: int = 0     # images mode: first train the quantizer alone on cached latents
                                        # for this many steps (0 = the paper: joint from scratch)
    quantizer_warmup_lr: float | None = None  # the warm-up's learning rate (null: lr)
    # discriminator (images mode); auto = dino when dino_weights is set, else patchgan
    discriminator: str = "auto"
    dino_weights: str | None = None     # facebook/dino-vits16 directory or model.safetensors
    patchgan_channels: int = 64
    patchgan_layers: int = 3
    disc_objective: str = "release"     # release: D's gradients also get the generator's GAN term; hinge alone
    dino_view: str = "crop_or_area"     # release: random 224 crop or area resize, 50/50; bilinear: resize
    dino_heads: str = "release"         # release: trunc-normal(0.02) init, BatchNorm eps 1e-6, synced; torch
    # processes of the train job, one GPU each; `coda train` starts them itself (coda/train/launch.py).
    # With global_batch set they train the same steps at any count, so a run may resume at another.
    processes: int = resumable(1)
    # bookkeeping
    checkpoint_every: int = resumable(1000)
    keep_checkpoints: int = resumable(2)     # the newest ones kept: a damaged last one costs one interval
    progress_interval: float = resumable(30.0)  # seconds between progress-bar refreshes
    num_workers: int = resumable(0)
    save_live: bool = resumable(False)  # also write the live (non-EMA) tokenizer to tokenizer_live/
    device: str = resumable("auto")     # auto | cpu | cuda
    # speed options, off by default for fidelity
    bf16: bool = resumable(False)
    channels_last: bool = resumable(False)
    tf32: bool = resumable(False)
    compile: bool = resumable(False)

    def __post_init__(self):
        # params.yaml is checked by the schema; these guard direct callers of train() too.
        self.betas = tuple(self.betas)
        choices = {"data_mode": DATA_MODES, "discriminator": DISCRIMINATORS, "disc_objective": DISC_OBJECTIVES}
        checks = {key: getattr(self, key) in allowed for key, allowed in choices.items()}
        checks |= {
            "batch_size": self.batch_size >= 1, "processes": self.processes >= 1,
            "lr_schedule_span": self.lr_schedule_span >= 1, "grad_accum": self.grad_accum >= 1,
            "global_batch": self.global_batch is None or self.global_batch >= 1,
            "checkpoint_every": self.checkpoint_every >= 1,
            "keep_checkpoints": self.keep_checkpoints >= 1,
            "max_steps": self.max_steps is None or self.max_steps >= 1,
            "quantizer_warmup_steps": self.quantizer_warmup_steps >= 0,
            "quantizer_warmup_lr": self.quantizer_warmup_lr is None or self.quantizer_warmup_lr > 0,
            "epochs": self.max_steps is not None or self.epochs > 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid train.{key}: {getattr(self, key)!r}"
                                 + (f" (choose from {choices[key]})" if key in choices else ""))

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each of ``world_size`` processes."""
        if self.global_batch is None:
            return self.grad_accum
        per_round = self.batch_size * world_size
        if self.global_batch % per_round:
            # depends on the process count, so no schema can check it: a short message and exit 2
            raise ParamsError(f"train.global_batch {self.global_batch} is not a multiple of train.batch_size x "
                             f"processes = {self.batch_size} x {world_size}: choose a batch_size or a number of "
                             f"processes that divides it")
        return self.global_batch // per_round

    @property
    def discriminator_kind(self) -> str:
        if self.discriminator == "auto":
            return "dino" if self.dino_weights else "patchgan"
        return self.discriminator

    @classmethod
    def from_dict(cls, values: dict | None) -> "TrainConfig":
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values or {}:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
                raise ValueError(f"unknown key '{key}' in the train: block of the experiment config{hint}")
        return cls(**(values or {}))

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas)
        return values


# train: keys that may change between a run and its resumption
RESUMABLE_CHANGES = frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("resumable"))

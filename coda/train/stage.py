"""The train stage: one experiment into its directory, with the optional quantizer warm-up as a
first step; or, for the authors' released checkpoints, only their conversion to a tokenizer."""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from ..artifacts import CHECKPOINTS, TOKENIZER_DIR, TRAIN_LOG
from ..discriminators import check_discriminator
from ..files import write_text
from . import distributed
from .config import TrainConfig
from .inputs import open_dataset
from .loop import TrainResult, fit

WARMUP = "quantizer_warmup"


def train(experiment: dict, vae_dir, out_dir, *, images=None, latents=None, on_step=None) -> TrainResult:
    """Train one experiment into ``out_dir``; rerunning the same call resumes from its checkpoint.

    experiment: {quantizer: {...}, lora: {...} | None, posterior: sample | mean, train: {...}}.
    on_step(step, losses): called after each optimizer step (tests use it to kill the process).

    ``train.quantizer_warmup_steps`` (images mode; off by default, a compute saver): the paper trains
    quantizer and LoRA jointly from scratch, but at small budgets the images-mode run is too short
    for the codebook to settle. So that many latents-mode steps run first (frozen VAE, as the
    ``ablate_attn`` rung) in ``out_dir/quantizer_warmup``, itself resumable, and the images-mode
    run starts from its EMA quantizer. The warm-up runs at ``train.quantizer_warmup_lr`` (null:
    ``train.lr``): the quantizer alone takes a rate the LoRA and GAN steps do not. One process group
    serves both.
    """
    cfg = TrainConfig.from_dict(experiment.get("train"))
    experiment = {**experiment, "train": cfg.to_dict()}  # defaults filled in: what run.json records
    warm_up = cfg.quantizer_warmup_steps > 0 and cfg.data_mode == "images"
    if warm_up and latents is None:
        raise ValueError("train.quantizer_warmup_steps needs the latent cache (--cache / latents=)")
    if cfg.data_mode == "images" and cfg.gan_weight > 0:  # before any loading: a missing DINO file fails now
        check_discriminator(cfg.discriminator_kind, cfg.dino_weights, cfg.dino_view, cfg.dino_heads)
    info = distributed.setup(cfg.device)
    init_quantizer, earlier_phases = None, []
    if warm_up:
        warm = TrainConfig.from_dict({**experiment["train"], "data_mode": "latents",
                                      "max_steps": cfg.quantizer_warmup_steps, "quantizer_warmup_steps": 0,
                                      "lr": cfg.quantizer_warmup_lr or cfg.lr, "quantizer_warmup_lr": None})
        result = fit(warm, {**experiment, "lora": None, "train": warm.to_dict()}, vae_dir, Path(out_dir) / WARMUP,
                     open_dataset("latents", images, latents, warm.seed), info, data=_describe(latents))
        init_quantizer = result.ema_tokenizer.quantizer.state_dict()
        earlier_phases = [("latents", Path(out_dir) / WARMUP / CHECKPOINTS / TRAIN_LOG)]  # the curves start with it
    dataset = open_dataset(cfg.data_mode, images, latents, cfg.seed)
    result = fit(cfg, experiment, vae_dir, out_dir, dataset, info, init_quantizer=init_quantizer, on_step=on_step,
                 data=_describe(latents if cfg.data_mode == "latents" else images), earlier_phases=earlier_phases)
    distributed.teardown(info)
    return result


def _describe(data) -> str:
    return type(data).__name__ if isinstance(data, Dataset) else str(data)


def save_released(experiment: dict, out_dir) -> None:
    """No training: the authors' checkpoints become a tokenizer directory like any other. They are
    files of the hub repository ``repo``, read from the local cache only (the fetch stage put them
    there; nothing downloads here), or with ``repo: null`` the local ``vae_file`` and
    ``quantizer_file`` (`coda` checks they exist before any stage runs)."""
    from ..compat.release import released_files
    from ..tokenizer import Tokenizer

    repo = experiment.get("repo")
    hub = {"repo_id": repo, "local_files_only": True} if repo else {}
    tokenizer = Tokenizer.from_official(*released_files(experiment), variant=experiment.get("variant", "f16"),
                                        posterior=experiment.get("posterior", "sample"), **hub)
    tokenizer.save_pretrained(Path(out_dir) / TOKENIZER_DIR)
    write_text(Path(out_dir) / TRAIN_LOG, "step\n")

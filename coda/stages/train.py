"""The train stage: one experiment's tokenizer, its log and checkpoints; for the authors' released
checkpoints, only their conversion to a tokenizer folder."""
from __future__ import annotations

from pathlib import Path

from ..artifacts import CHECKPOINTS, TOKENIZER_DIR, TRAIN_LOG, VAE_DIR
from ..config import at_scale, experiment_config, experiment_vae, vae_location
from ..files import write_text
from ..train.stage import save_released, train as train_experiment
from . import no_row


def train(params: dict, *, experiment: str, prepared: str, vae: str, cache: str, out: str) -> None:
    config = experiment_config(params, experiment)
    out = Path(out)
    if not at_scale(params, config):
        (out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        no_row(params, config, out / TOKENIZER_DIR)
        write_text(out / TRAIN_LOG, "step\n")
    elif config.get("kind", "train") == "released":
        save_released(config, out)
    else:
        vae_dir = vae_location(vae, experiment_vae(config)) / VAE_DIR
        train_experiment(config, vae_dir, out, images=prepared, latents=cache)

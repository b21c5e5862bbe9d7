"""Training: ``train(experiment, vae_dir, out_dir, images=... | latents=...)`` is the API;
``python -m coda.train`` is a thin command-line wrapper (torchrun-compatible)."""
from .config import TrainConfig
from .loop import NonFiniteLossError, TrainResult, train
from .schedule import learning_rate

__all__ = ["TrainConfig", "TrainResult", "NonFiniteLossError", "train", "learning_rate"]

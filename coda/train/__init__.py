"""Training: ``train(experiment, vae_dir, out_dir, images=... | latents=...)`` is the API; the
command line is ``coda train`` (``torchrun --nproc_per_node N -m coda train ...`` for data parallel)."""
from .config import TrainConfig
from .loop import NonFiniteLossError, TrainResult
from .schedule import learning_rate
from .stage import save_released, train

__all__ = ["TrainConfig", "TrainResult", "NonFiniteLossError", "train", "save_released", "learning_rate"]

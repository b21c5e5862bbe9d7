"""Evaluation of tokenizers and of the continuous VAE (docs/evaluation.md)."""
from .evaluate import compute_reference, evaluate_tokenizer
from .frechet import FrechetStatistics, resolve_inception_weights
from coda.pixels import to_uint8

from .metrics import CodeUsage, perplexity, psnr_uint8, ssim_uint8

__all__ = ["compute_reference", "evaluate_tokenizer", "FrechetStatistics", "resolve_inception_weights", "CodeUsage",
           "perplexity", "psnr_uint8", "ssim_uint8", "to_uint8"]

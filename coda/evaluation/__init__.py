"""Evaluation of tokenizers and of the continuous VAE (design/evaluation.md)."""
from .evaluate import checkpoint_sha256, evaluate_tokenizer, library_versions
from .frechet import FrechetStatistics, frechet_distance, resolve_inception_weights
from .metrics import (CodeUsage, perplexity, psnr_uint8, ssim_uint8, to_uint8, utilization)

__all__ = ["evaluate_tokenizer", "checkpoint_sha256", "library_versions", "FrechetStatistics",
           "frechet_distance", "resolve_inception_weights", "CodeUsage", "perplexity", "psnr_uint8",
           "ssim_uint8", "to_uint8", "utilization"]

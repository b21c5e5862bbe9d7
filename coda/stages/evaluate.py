"""The evaluate stage: one experiment's tokenizer; or, for ``--experiment vae``, every VAE of the
scale itself (the ceiling rows): its `vae` into ``out``, each of `extra_vaes` into ``out/<name>``."""
from __future__ import annotations

import json
from pathlib import Path

from ..artifacts import (COUNTS_FILE, METRICS_FILE, NPZ_FILE, REFERENCE_FILE, SAMPLES_FILE, VAE_DIR, VAE_INFO,
                         VAL_NPY)
from ..config import (DEFAULT_VAE, ParamsError, at_scale, ceiling_name, experiment_config, experiment_vae,
                      scale_block, scale_vaes, vae_location)
from ..data.datasets import read_meta
from ..evaluation.ceiling import ContinuousCeiling
from ..evaluation.evaluate import evaluate_tokenizer
from ..tokenizer import Tokenizer
from ..vae import ContinuousVAE
from . import no_row


def evaluate(params: dict, *, experiment: str, prepared: str, vae: str, reference: str, out: str,
             tokenizer: str | None = None) -> None:
    out = Path(out)
    if experiment == DEFAULT_VAE:
        posterior = params["experiments"]["base"].get("posterior", "sample")
        for name in scale_vaes(params):
            vae_dir = vae_location(vae, name)
            ceiling = ContinuousCeiling(ContinuousVAE.from_pretrained(vae_dir / VAE_DIR))
            _evaluate(params, ceiling, vae_dir, prepared, reference, vae_location(out, name), posterior,
                      experiment=ceiling_name(name), ema=None, method="continuous VAE", model_path=str(vae_dir))
        return
    if not tokenizer:
        raise ParamsError("coda evaluate: --tokenizer is required for an experiment")
    config = experiment_config(params, experiment)
    if not at_scale(params, config):
        no_row(params, config, out)
        return
    # trained runs save EMA weights; the release ships *_ema.pth
    _evaluate(params, Tokenizer.from_pretrained(tokenizer), vae_location(vae, experiment_vae(config)), prepared,
              reference, out, config.get("posterior", "sample"), experiment=experiment, ema=True, method=None,
              model_path=tokenizer)


def _evaluate(params, tokenizer, vae_dir: Path, prepared: str, reference: str, out: Path, posterior: str, *,
              experiment: str, ema, method, model_path: str) -> None:
    cfg = scale_block(params).get("evaluate", {})
    settings = params.get("evaluate", {})
    meta = read_meta(prepared)
    info = json.loads((vae_dir / VAE_INFO).read_text())
    evaluate_tokenizer(
        tokenizer, Path(prepared) / VAL_NPY, out / METRICS_FILE, batch_size=cfg.get("batch_size", 16),
        inception_weights=settings.get("inception_weights"), posterior=posterior, seed=settings.get("seed", 0),
        recon_samples_out=out / SAMPLES_FILE, num_recon_samples=cfg.get("reconstructions", 8),
        code_counts_out=out / COUNTS_FILE if tokenizer.kind == "tokenizer" else None,  # the ceiling has no codes
        max_images=cfg.get("max_images"), progressive=settings.get("progressive", "none"),
        reference_file=Path(reference) / REFERENCE_FILE,
        fid_protocol=settings.get("fid_protocol", "torch-fidelity"),
        npz_out=out / NPZ_FILE if cfg.get("export_npz", False) else None, rfd_vgg16=cfg.get("rfd_vgg16", True),
        meta={"experiment": experiment, "dataset": meta.get("dataset"), "crop": meta.get("crop"),
              "ema": ema, "method": method, "model_path": model_path, "vae": info["label"]})

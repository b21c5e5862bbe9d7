"""The report stage: tables, figures, model cards and DVC's views of the current scale."""
from __future__ import annotations

from pathlib import Path

from ..artifacts import COUNTS_FILE, METRICS_FILE, SAMPLES_FILE, TOKENIZER_DIR, TRAIN_LOG, VAL_NPY
from ..config import DEFAULT_VAE, ceiling_name, experiment_config, scale_experiments, scale_vaes, vae_location
from ..report.build import build_report


def report(params: dict, *, reported: str, prepared: str, train: str, eval: str, out: str) -> None:
    names = scale_experiments(params)
    trained, evaluated = Path(train), Path(eval)
    folders = {ceiling_name(v): vae_location(evaluated / DEFAULT_VAE, v) for v in scale_vaes(params)}
    folders |= {n: evaluated / n for n in names}
    build_report(
        {n: folder / METRICS_FILE for n, folder in folders.items()}, reported, out,
        experiments_meta={name: experiment_config(params, name) for name in names},
        train_logs={n: trained / n / TRAIN_LOG for n in names},
        recon_samples={"original": Path(prepared) / VAL_NPY,
                       **{n: folder / SAMPLES_FILE for n, folder in folders.items()}},
        code_counts={n: evaluated / n / COUNTS_FILE for n in names},
        tokenizers={n: trained / n / TOKENIZER_DIR for n in names})

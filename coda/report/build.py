"""The report stage: tables, figures and a README from all metrics files and the published numbers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from coda.artifacts import ABLATION, CONFIG_NAME, FIGURE_NAMES, TABLE1
from coda.files import write_json, write_text
from coda.pixels import read_image_array
from coda.tokenizer import Tokenizer

from . import figures, readme, tables

ORIGINAL = "original"  # key of recon_samples that holds the validation images themselves
GRID_COLUMNS = 8  # reconstructions shown per row


def _images(path, count: int) -> np.ndarray:
    return np.ascontiguousarray(np.load(path, mmap_mode="r")[:count])


def _originals(val_npy, metrics: dict[str, dict], count: int) -> np.ndarray:
    """The validation images the evaluations saved reconstructions of (evenly spread over the set)."""
    images = read_image_array(val_npy, "uint8 validation set")
    shown = next((r["recon_sample_indices"] for r in metrics.values() if r.get("recon_sample_indices")), None)
    # records from before the indices were recorded hold the first images
    return np.ascontiguousarray(images[:count] if shown is None else images[list(shown)[:count]])


def _grid_rows(metrics: dict[str, dict], recon_samples: dict, order: list[str], count: int) -> list:
    rows = []
    if ORIGINAL in recon_samples:
        rows.append(("original", _originals(recon_samples[ORIGINAL], metrics, count)))
    for name in order + sorted(set(recon_samples) - set(order) - {ORIGINAL}):
        if name in recon_samples:
            m = metrics.get(name, {})
            label = f"{name}\n(VAE ceiling)" if tables.is_ceiling(m) else name
            if m.get("psnr") is not None:
                label += f"\nPSNR {m['psnr']:.1f}"
            rows.append((label, _images(recon_samples[name], count)))
    return rows


def model_card(tokenizer_dir: Path, record: dict):
    """The card ``Tokenizer.save_pretrained`` would write for this tokenizer and evaluation (from its
    config alone: the card describes the architecture and the measured numbers, not the weights)."""
    tokenizer = Tokenizer.from_config(json.loads((tokenizer_dir / CONFIG_NAME).read_text()))
    return tokenizer.generate_model_card(metrics=record, figure=f"../figures/{FIGURE_NAMES['grid']}",
                                         repo_id=str(tokenizer_dir))


def build_report(metrics_files: dict, reported_csv, out_dir, experiments_meta: dict | None = None,
                 train_logs: dict | None = None, recon_samples: dict | None = None,
                 code_counts: dict | None = None, tokenizers: dict | None = None) -> dict[str, Path]:
    """Write ``table1.csv``, ``ablation.csv``, ``figures/*.png``, ``README.md``, ``metrics/<name>.json``
    (the numbers only: DVC's metrics), ``provenance/<name>.json`` (each whole evaluation record) and
    ``model_cards/<name>.md`` (the Hub model card of each tokenizer, with its measured numbers)
    under ``out_dir``.

    ``metrics_files``: experiment name -> the evaluate stage's metrics.json.
    ``experiments_meta``: experiment name -> its config block (a ``method`` label, a ``vae`` label
    where the evaluation record has none, ``quantizer.kind``, ``lora``), also the row order.
    ``train_logs``: name -> train_log.tsv.
    ``recon_samples``: name -> uint8 N x H x W x 3 .npy, plus ``"original"`` -> the validation
    images. ``code_counts``: name -> the evaluator's code histogram .npy. ``tokenizers``: name -> the
    tokenizer directory (its config.json is read). Paths that do not exist are
    left out of the figures. Returns the written paths.
    """
    out_dir = Path(out_dir)
    experiments_meta = experiments_meta or {}
    metrics = tables.load_metrics(metrics_files)
    order = tables.experiment_order(metrics, experiments_meta)
    metrics = {name: metrics[name] for name in order}
    reported = tables.load_reported(reported_csv)

    table1 = tables.table1(metrics, reported, experiments_meta)
    ablation = tables.ablation(metrics, reported)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"table1": out_dir / TABLE1, "ablation": out_dir / ABLATION}
    write_text(written["table1"], table1.to_csv(index=False))
    write_text(written["ablation"], ablation.to_csv(index=False))

    figure_dir = out_dir / "figures"
    counts = {name: np.load(path) for name, path in (code_counts or {}).items() if Path(path).is_file()}
    recon_samples = {name: path for name, path in (recon_samples or {}).items() if Path(path).is_file()}
    written["grid"] = figures.reconstruction_grid(
        _grid_rows(metrics, recon_samples, order, GRID_COLUMNS), figure_dir / FIGURE_NAMES["grid"], GRID_COLUMNS)
    written["usage"] = figures.code_usage(metrics, counts, figure_dir / FIGURE_NAMES["usage"])
    written["curves"] = figures.training_curves(train_logs or {}, figure_dir / FIGURE_NAMES["curves"])
    written["rate_distortion"] = figures.rate_distortion(metrics, figure_dir / FIGURE_NAMES["rate_distortion"])

    for name, record in metrics.items():
        write_json(out_dir / "metrics" / f"{name}.json", tables.compared_numbers(record))
        record.write(out_dir / "provenance" / f"{name}.json")
    (out_dir / "curves").mkdir(exist_ok=True)  # `dvc plots show` draws loss against step from these
    for name, path in (train_logs or {}).items():
        if Path(path).is_file():
            write_text(out_dir / "curves" / f"{name}.tsv", Path(path).read_text())
    (out_dir / "model_cards").mkdir(exist_ok=True)
    for name, directory in (tokenizers or {}).items():
        if name in metrics and (Path(directory) / CONFIG_NAME).is_file():
            written[f"card_{name}"] = write_text(out_dir / "model_cards" / f"{name}.md",
                                                 str(model_card(Path(directory), metrics[name])))
    written["readme"] = write_text(out_dir / "README.md",
                                   readme.render(metrics, table1, ablation, list(FIGURE_NAMES.values())))
    return written

"""Table 1 and the ablation table: computed metrics files next to the published numbers."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from coda.evaluation_record import EvaluationRecord

TABLE1_COLUMNS = ["experiment", "method", "source", "vae", "downsample", "indices_per_image", "bits_per_image",
                  "codebook_size", "rfid", "rfd_vgg16", "psnr", "ssim", "lpips_vgg", "codebook_utilization",
                  "dataset", "resolution"]
INTEGER_COLUMNS = ["indices_per_image", "codebook_size", "resolution"]
TEXT_COLUMNS = {"experiment", "method", "source", "vae", "downsample", "dataset", "description",
                "dataset_computed", "reported_source"}
DECIMALS = 4
COMPUTED = "computed"

# docs/method.md section 6: (experiment, step, the `variant` of the "CODA ablation" rows of reported.csv)
ABLATION_LADDER = [
    ("ablate_vq", "plain VQ on the frozen latent (single scale, nearest neighbour)", "plain VQ on frozen latent"),
    ("ablate_rvq", "+ residual multi-scale quantization", "+ residual multi-scale"),
    ("ablate_attn", "+ attention lookup (full CODA quantizer)", "+ attention lookup"),
    ("coda", "+ LoRA adaptation (full CODA)", "+ LoRA adaptation"),
]
ABLATION_METHOD = "CODA ablation"
ABLATION_COLUMNS = ["step", "experiment", "description", "rfid_computed", "rfid_reported",
                    "codebook_utilization_computed", "codebook_utilization_reported",
                    "indices_per_image_computed", "indices_per_image_reported", "rfd_vgg16_computed",
                    "psnr_computed", "ssim_computed", "lpips_vgg_computed", "dataset_computed",
                    "resolution_computed", "reported_source"]

QUANTIZER_LABELS = {"coda": "CODA quantizer (multi-scale, attention lookup)",
                    "rvq": "multi-scale residual VQ", "vq": "plain VQ"}
CEILING_LABEL = "continuous VAE (no quantizer; ceiling)"


def load_metrics(files: dict[str, str | Path]) -> dict[str, EvaluationRecord]:
    """experiment name -> its evaluation record, for the files that exist."""
    return {name: EvaluationRecord.read(path) for name, path in files.items() if Path(path).is_file()}


# The numbers `dvc exp show` compares, one column each (everything else is provenance).
COMPARED_METRICS = ["rfid", "inception_score", "rfd_vgg16", "psnr", "ssim", "lpips_vgg", "lpips_alex", "colour_error",
                    "codebook_utilization",
                    "code_perplexity", "bits_per_image"]


def compared_numbers(metrics: dict) -> dict:
    """The numeric metrics of one evaluation record (rFID and Inception Score only from the official weights)."""
    numbers = {key: metrics.get(key) for key in COMPARED_METRICS if metrics.get(key) is not None}
    if shown_rfid(metrics) is None:
        numbers.pop("rfid", None), numbers.pop("inception_score", None)
    return numbers


def load_reported(reported_csv: str | Path) -> pd.DataFrame:
    # downsample holds "1D" for TiTok: keep it text
    return pd.read_csv(reported_csv, dtype={"downsample": str, "variant": str, "source": str})


def shown_rfid(metrics: dict) -> float | None:
    """rFID only from the official Inception weights; anything else stays out of the tables."""
    return metrics.get("rfid") if metrics.get("rfid_official_weights") else None


def is_ceiling(metrics: dict) -> bool:
    return metrics.get("kind") == "continuous_vae"


def method_label(metrics: dict, meta: dict) -> str:
    if meta.get("method") or metrics.get("method"):
        return meta.get("method") or metrics["method"]
    if is_ceiling(metrics):
        return CEILING_LABEL
    kind = (meta.get("quantizer") or {}).get("kind") or metrics.get("quantizer_kind")
    if kind is None:
        return "tokenizer"
    lora = meta["lora"] if "lora" in meta else metrics.get("lora", "unknown")
    label = QUANTIZER_LABELS.get(kind, kind)
    if lora != "unknown":
        label += " + LoRA" if lora else ", frozen VAE"
    return label


def _text(value) -> str | None:
    return value if isinstance(value, str) and value else None


def computed_row(name: str, metrics: dict, meta: dict) -> dict:
    return {"experiment": name, "method": method_label(metrics, meta), "source": COMPUTED,
            # the evaluation's own label first: an experiment's `vae` key is the name of the scale VAE it trains on
            "vae": metrics.get("vae") or _text(meta.get("vae")),
            "downsample": None if metrics.get("downsample") is None else str(metrics["downsample"]),
            "rfid": shown_rfid(metrics),
            **{key: metrics.get(key) for key in TABLE1_COLUMNS if key not in
               {"experiment", "method", "source", "vae", "downsample", "rfid"}}}


def _present(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _reported_vae(method: str, variant: str | None) -> str | None:
    if method == ABLATION_METHOD:
        return "MAR KL-16 VAE"  # the ladder is the paper's f16 setting
    if method.startswith("MAR KL-16"):
        return "MAR KL-16"
    return variant if variant and "VAE" in variant else None


def reported_row(record: dict) -> dict:
    record = {key: _present(value) for key, value in record.items()}
    method, variant = record["method"], record.get("variant")
    indices, size = record.get("indices_per_image"), record.get("codebook_size")
    return {"experiment": None, "method": f"{method} ({variant})" if variant else method,
            "source": record["source"], "vae": _reported_vae(method, variant),
            "downsample": record.get("downsample"), "indices_per_image": indices,
            "bits_per_image": round(indices * math.log2(size), 1) if indices and size else None,
            "codebook_size": size, "rfid": record.get("rfid"), "rfd_vgg16": None, "psnr": record.get("psnr"),
            "ssim": None, "lpips_vgg": None, "codebook_utilization": record.get("codebook_utilization"),
            "dataset": None, "resolution": None}


def experiment_order(metrics: dict[str, dict], experiments_meta: dict) -> list[str]:
    """Ceiling rows first, then experiments in the order they were configured, then the rest."""
    configured = [name for name in experiments_meta if name in metrics]
    names = configured + sorted(set(metrics) - set(configured))
    return sorted(names, key=lambda name: not is_ceiling(metrics[name]))


def _typed(frame: pd.DataFrame, integer_columns: list[str]) -> pd.DataFrame:
    """Integers without a trailing .0 (missing stays empty); other numbers to 4 decimals."""
    for column in frame.columns:
        if column in integer_columns:
            frame[column] = pd.to_numeric(frame[column]).round().astype("Int64")
        elif column not in TEXT_COLUMNS:
            frame[column] = pd.to_numeric(frame[column]).round(DECIMALS)
    return frame


def table1(metrics: dict[str, dict], reported: pd.DataFrame, experiments_meta: dict) -> pd.DataFrame:
    rows = [computed_row(name, metrics[name], experiments_meta.get(name) or {})
            for name in experiment_order(metrics, experiments_meta)]
    rows += [reported_row(record) for record in reported.to_dict("records")]
    return _typed(pd.DataFrame(rows, columns=TABLE1_COLUMNS), INTEGER_COLUMNS)


def ablation(metrics: dict[str, dict], reported: pd.DataFrame) -> pd.DataFrame:
    ladder = reported[reported["method"] == ABLATION_METHOD].set_index("variant")
    rows = []
    for step, (name, description, variant) in enumerate(ABLATION_LADDER, start=1):
        ours = metrics.get(name, {})
        theirs = ladder.loc[variant].to_dict() if variant in ladder.index else {}
        theirs = {key: _present(value) for key, value in theirs.items()}
        row = {c: ours.get(c.removesuffix("_computed")) for c in ABLATION_COLUMNS if c.endswith("_computed")}
        row |= {c: theirs.get(c.removesuffix("_reported")) for c in ABLATION_COLUMNS if c.endswith("_reported")}
        rows.append({**row, "step": step, "experiment": name, "description": description,
                     "rfid_computed": shown_rfid(ours), "reported_source": theirs.get("source")})
    return _typed(pd.DataFrame(rows, columns=ABLATION_COLUMNS),
                  ["step", "indices_per_image_computed", "indices_per_image_reported", "resolution_computed"])

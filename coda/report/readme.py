"""results/README.md, generated from the metrics files: the protocol and what was not computed."""
from __future__ import annotations

import pandas as pd

from coda.evaluation_record import EvaluationRecord

from .tables import ABLATION_LADDER, is_ceiling

PROTOCOL_FIELDS = [("dataset", "dataset"), ("num_images", "images"), ("crop", "crop"),
                   ("resolution", "resolution"), ("posterior", "posterior"), ("ema", "EMA weights"),
                   ("model_sha256", "model sha256")]


def _cell(value) -> str:
    if value is None:
        return "not recorded"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return f"`{value[:12]}`"
    return str(value)


def protocol_table(metrics: dict[str, dict]) -> list[str]:
    lines = ["| experiment | kind | " + " | ".join(label for _, label in PROTOCOL_FIELDS) + " |",
             "|---" * (len(PROTOCOL_FIELDS) + 2) + "|"]
    for name, m in metrics.items():
        kind = "continuous VAE (ceiling)" if is_ceiling(m) else "tokenizer"
        lines.append(f"| {name} | {kind} | " + " | ".join(_cell(m.get(key)) for key, _ in PROTOCOL_FIELDS) + " |")
    return lines


def not_computed(metrics: dict[str, dict]) -> list[str]:
    """One line per (metric, reason), naming the experiments it applies to."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for name, m in metrics.items():
        for metric, reason_key in (("rFID", "rfid_missing_reason"), ("rFD-VGG16", "rfd_vgg16_missing_reason"),
                                   ("Inception Score", "inception_score_missing_reason"),
                                   ("LPIPS", "lpips_missing_reason"), ("SSIM", "ssim_missing_reason")):
            if m.get(reason_key):
                grouped.setdefault((f"{metric} not computed", m[reason_key]), []).append(name)
        if m.get("rfid") is not None and not m.get("rfid_official_weights"):
            warning = (m.get("rfid_weights") or {}).get("warning", "the weights are not the official ones")
            grouped.setdefault(("an rFID was computed but is left out of the tables", warning), []).append(name)
    notes = [f"- {what} for {', '.join(names)}: {why}" for (what, why), names in grouped.items()]
    for name, _, _ in ABLATION_LADDER:
        if name not in metrics:
            notes.append(f"- ablation step `{name}`: no metrics file, so its computed columns are empty")
    return notes


def library_lines(metrics: dict[str, dict]) -> list[str]:
    versions = {}
    for m in metrics.values():
        for library, version in (m.get("library_versions") or {}).items():
            versions.setdefault(library, set()).add(str(version))
    lines = [f"- {library}: {', '.join(sorted(found))}" for library, found in sorted(versions.items())]
    if any(len(found) > 1 for found in versions.values()):
        lines.append("- NOTE: the metrics files were made with different library versions")
    return lines


def implementation_lines(metrics: dict[str, dict]) -> list[str]:
    first = next(iter(metrics.values()), EvaluationRecord()).to_dict()
    keys = [("PSNR", "psnr_cap_db"), ("SSIM", "ssim_implementation"), ("LPIPS", "lpips_implementation"),
            ("Frechet distances", "frechet_implementation"), ("FID protocol", "fid_protocol_implementation"),
            ("Inception Score", "inception_score_implementation")]
    if first.get("psnr_cap_db") is not None:
        cap = first["psnr_cap_db"]
        first = {**first, "psnr_cap_db": f"on uint8 images, per image, averaged; identical images capped at {cap} dB"}
    return [f"- {label}: {first[key]}" for label, key in keys if first.get(key) is not None]


def _number(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def rate_distortion_lines(metrics: dict[str, dict]) -> list[str]:
    """The figure and the evaluate stage's per-k rows it is drawn from."""
    lines = ["## Rate-distortion", "", "The multi-scale residual code is progressive: decoding from its first k "
             "scales only gives a coarser image at fewer bits (`Tokenizer.decode(indices, scales=k)`; the set "
             "of k is `evaluate.progressive`). The dashed line is the continuous VAE.", "",
             "![rate-distortion](figures/rate_distortion.png)", "",
             "| experiment | k scales | indices / image | bits / image | PSNR | LPIPS-vgg | rFD-VGG16 |",
             "|---|---|---|---|---|---|---|"]
    rows = [(name, row) for name, m in metrics.items() for row in m.get("progressive") or []]
    lines += [f"| {name} | {row['scales']} | {row['indices_per_image']} | {row['bits_per_image']:.0f} | "
              f"{_number(row['psnr'], 2)} | {_number(row['lpips_vgg'], 3)} | {_number(row['rfd_vgg16'], 2)} |"
              for name, row in rows]
    return lines + ([] if rows else ["No metrics file has per-k rows (`evaluate.progressive: none`)."]) + [""]


def render(metrics: dict[str, dict], table: pd.DataFrame, ablation: pd.DataFrame, figures: list[str]) -> str:
    computed = int((table["source"] == "computed").sum())
    lines = ["# Results", "", "Generated by the report stage (`coda.report`) from the evaluate stage's records (copied "
             "whole to `provenance/<name>.json`; their numbers in `metrics/<name>.json`) and "
             "`references/reported.csv`; do not edit by hand.", "",
             f"- `table1.csv`: {computed} computed row(s) (`source` = computed) and {len(table) - computed} "
             "published row(s) (`source` = the citation; see `references/README.md`).",
             f"- `ablation.csv`: the {len(ablation)} steps of the CODA ablation ladder, computed next to reported.",
             *[f"- `figures/{name}`" for name in figures], "",
             "## Protocol", "",
             "rFID and rFD-VGG16 compare the reconstructions with the same validation images (paired sets). "
             "All metrics use the uint8 reconstructions (rounded, clamped). Empty cells are values that "
             "were not computed or not reported.", ""]
    lines += protocol_table(metrics) if metrics else ["No metrics files were found."]
    lines += ["", "Metric implementations:", "", *implementation_lines(metrics), "",
              "Library versions of the metric code:", "", *library_lines(metrics), "",
              "## Not computed, and why", ""]
    lines += not_computed(metrics) or ["Everything was computed."]
    lines += ["", "Published rows carry no dataset/resolution column here (`reported.csv` does not record "
              "them) and no rFD-VGG16, SSIM or LPIPS (not reported by the sources). Their `bits_per_image` "
              "is derived as indices x log2(codebook size).", ""]
    lines += rate_distortion_lines(metrics)
    return "\n".join(lines)

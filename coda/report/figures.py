"""PNG figures: reconstruction grid, code usage per scale, training curves, rate-distortion.

Built on matplotlib's object API with the Agg canvas, so no global backend (and no display) is
involved. A figure without data still becomes a PNG that says what is missing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..files import atomic_path

DPI = 120
LABEL_SIZE = 10


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    with atomic_path(path) as temporary:  # a full disk leaves the old figure, not half of a new one
        figure.savefig(temporary, dpi=DPI, bbox_inches="tight", format="png")
    return path


def missing_data_figure(path: Path, title: str, message: str) -> Path:
    figure = Figure(figsize=(6, 2), layout="constrained")
    axes = figure.add_subplot()
    axes.set_axis_off()
    axes.set_title(title)
    axes.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=LABEL_SIZE)
    return _save(figure, path)


def reconstruction_grid(rows: list[tuple[str, np.ndarray]], path: Path, columns: int = 8) -> Path:
    """One row per (label, K x H x W x 3 uint8 images): originals, the VAE, each experiment."""
    if not rows:
        return missing_data_figure(path, "Reconstructions", "no reconstruction samples were given")
    columns = min(columns, max(len(images) for _, images in rows))
    figure = Figure(figsize=(2.0 * columns + 2.2, 2.1 * len(rows)), layout="constrained")
    grid = figure.subplots(len(rows), columns, squeeze=False)
    for row, (label, images) in enumerate(rows):
        for column in range(columns):
            axes = grid[row][column]
            axes.set(xticks=[], yticks=[])
            if column < len(images):
                axes.imshow(images[column], interpolation="nearest")
            else:
                axes.set_axis_off()
        grid[row][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=LABEL_SIZE)
    figure.suptitle("Validation images and their reconstructions (evenly spaced over the validation set)")
    return _save(figure, path)


def code_usage(metrics: dict[str, dict], code_counts: dict[str, np.ndarray], path: Path) -> Path:
    """Left: utilization per scale. Right: pooled code frequency by rank (sorted usage curve)."""
    quantized = {name: m for name, m in metrics.items() if m.get("utilization_per_scale")}
    if not quantized:
        return missing_data_figure(path, "Code usage", "no metrics file with code statistics")
    figure = Figure(figsize=(12, 4.5), layout="constrained")
    per_scale, curve = figure.subplots(1, 2)
    all_scales = set()
    for name, m in quantized.items():  # x = token map side, so single- and multi-scale runs line up
        scales = m.get("scales") or list(range(1, len(m["utilization_per_scale"]) + 1))
        all_scales.update(scales)
        per_scale.plot(scales, [100 * u for u in m["utilization_per_scale"]], marker="o", label=name)
    per_scale.set_xticks(sorted(all_scales), [f"{s}x{s}" for s in sorted(all_scales)], rotation=45)
    per_scale.set(xlabel="scale (token map size)", ylabel="codes used at least once (% of codebook)",
                  title="Codebook utilization per scale", ylim=(0, 105))
    per_scale.legend(fontsize=8)
    for name, counts in code_counts.items():
        pooled = np.sort(np.asarray(counts).reshape(len(counts), -1).sum(0))[::-1]
        if pooled.sum() == 0:
            continue
        rank = np.arange(1, len(pooled) + 1) / len(pooled)
        curve.plot(rank, pooled / pooled.sum(), label=name)
    if code_counts:
        curve.set(yscale="log", xlabel="code rank (fraction of codebook, most used first)",
                  ylabel="share of all tokens (log)", title="Sorted code usage, all scales pooled")
        curve.legend(fontsize=8)
    else:
        curve.set_axis_off()
        curve.text(0.5, 0.5, "no code histograms given", ha="center", va="center")
    return _save(figure, path)


# The quantities that matter in each phase of training, as (column, panel title). The total loss is
# not among them: it sums terms of different scales (the entropy term is negative), and the latent
# and image phases' totals are different quantities.
CURVE_PANELS = {
    "latents": [("latent_mse", "latent MSE"), ("vq", "VQ + commitment loss"), ("entropy", "entropy loss"),
                ("codes_used", "codes used in the step (fraction)")],
    "images": [("l1", "pixel L1"), ("lpips", "LPIPS"), ("gan_g", "generator GAN loss"),
               ("d_loss", "discriminator loss"), ("vq", "VQ + commitment loss"),
               ("codes_used", "codes used in the step (fraction)")],
}
PHASE_TITLES = {"latents": "Latent phase: the quantizer on cached latents, VAE frozen",
                "images": "Image phase: LoRA, pixel, LPIPS and GAN losses, on images"}
WIDE_RANGE = 10.0  # a panel whose positive values span more than this factor gets a log axis
FRACTIONS = {"codes_used"}  # drawn on a linear 0-1 axis whatever their range


def _phases(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A log's rows by phase, each with ``phase_step`` counted from 1 (the ``phase`` column of
    coda/train/log.py; a log without it is one phase, told by its columns)."""
    if "phase" in frame:
        groups = {phase: rows for phase, rows in frame.groupby("phase", sort=False)}
    else:
        groups = {"latents" if "latent_mse" in frame else "images": frame}
    return {phase: rows.assign(phase_step=rows["step"] - rows["step"].min() + 1) for phase, rows in groups.items()}


def _smooth(values: pd.Series) -> pd.Series:
    """An exponential moving average whose span follows the run's length (4 to 100 steps)."""
    return values.ewm(span=float(np.clip(len(values) / 4, 4, 100))).mean()


def training_curves(train_logs: dict[str, Path], path: Path) -> Path:
    """One row of panels per training phase (latents, images), one panel per quantity that matters
    in it: the raw trace faint, its moving average over it, a log axis where the values span a wide
    range, each experiment in one colour in every panel (a warm-up before an image run dashed)."""
    logs = {name: pd.read_csv(log, sep="\t") for name, log in train_logs.items() if Path(log).is_file()}
    logs = {name: _phases(frame) for name, frame in logs.items() if "step" in frame and len(frame)}
    colours = {name: f"C{i}" for i, name in enumerate(train_logs)}
    rows = {phase: [(column, title) for column, title in panels
                    if any(column in runs.get(phase, {}) and runs[phase][column].abs().sum() > 0
                           for runs in logs.values())]
            for phase, panels in CURVE_PANELS.items()}
    rows = {phase: panels for phase, panels in rows.items() if panels}
    if not rows:
        return missing_data_figure(path, "Training curves", "no training logs (train_log.tsv) were given")
    columns = max(len(panels) for panels in rows.values())
    figure = Figure(figsize=(3.7 * columns, 3.3 * len(rows) + 0.6), layout="constrained")
    for subfigure, (phase, panels) in zip(np.atleast_1d(figure.subfigures(len(rows), 1)), rows.items()):
        subfigure.suptitle(PHASE_TITLES[phase], fontsize=LABEL_SIZE + 1, fontweight="bold")
        for axes, (column, title) in zip(subfigure.subplots(1, columns, squeeze=False)[0], panels):
            values = []
            # a warm-up is drawn last, dashed: it can be another experiment's run step for step (coda's is
            # the ablate_attn rung's), and would hide under it
            order = sorted(logs, key=lambda name: phase == "latents" and "images" in logs[name])
            for name in order:
                runs = logs[name]
                frame = runs.get(phase)
                if frame is None or column not in frame or not frame[column].abs().sum() > 0:
                    continue
                warm_up = phase == "latents" and "images" in runs
                label = f"{name} (warm-up)" if warm_up else name
                axes.plot(frame["phase_step"], frame[column], color=colours[name], alpha=0.2, linewidth=0.6)
                axes.plot(frame["phase_step"], _smooth(frame[column]), color=colours[name], linewidth=1.6,
                          linestyle="--" if warm_up else "-", label=label)
                values.append(frame[column].to_numpy(dtype=float))
            values = np.concatenate(values)
            positive = values[np.isfinite(values)]
            if column in FRACTIONS:
                axes.set_ylim(0, 1.02)
            elif positive.size and positive.min() > 0 and positive.max() / positive.min() > WIDE_RANGE:
                axes.set_yscale("log")
                title += " (log)"
            axes.set_title(title, fontsize=LABEL_SIZE)
            axes.set_xlabel("step of this phase", fontsize=LABEL_SIZE - 1)
            axes.grid(alpha=0.3)
        subfigure.axes[0].legend(fontsize=8)
        for axes in subfigure.axes[len(panels):]:
            axes.set_axis_off()
    figure.suptitle("Training curves (train_log.tsv): each step faint, its moving average bold",
                    fontsize=LABEL_SIZE + 2)
    return _save(figure, path)


RATE_DISTORTION_PANELS = [("psnr", "PSNR (dB), higher is better"), ("lpips_vgg", "LPIPS-vgg, lower is better"),
                          ("rfd_vgg16", "rFD-VGG16, lower is better")]


def rate_distortion(metrics: dict[str, dict], path: Path) -> Path:
    """Quality against bits per image: one line per experiment through its decodes from the first
    k scales (the evaluate stage's ``progressive`` rows), the continuous VAE as a horizontal line."""
    curves = {name: m.get("progressive") or [m] for name, m in metrics.items() if m.get("bits_per_image")}
    ceilings = {name: m for name, m in metrics.items() if m.get("kind") == "continuous_vae"}
    if not curves:
        return missing_data_figure(path, "Rate-distortion", "no metrics file of a tokenizer (bits per image)")
    # a metric no experiment has (rFD-VGG16 where the scale turns it off) gets no panel
    panels = [(key, label) for key, label in RATE_DISTORTION_PANELS
              if any(row.get(key) is not None for rows in curves.values() for row in rows)]
    figure = Figure(figsize=(5 * len(panels), 4.5), layout="constrained")
    for axes, (key, label) in zip(np.atleast_1d(figure.subplots(1, len(panels))), panels):
        for name, rows in curves.items():
            points = [(row["bits_per_image"], row[key]) for row in rows if row.get(key) is not None]
            if points:
                axes.plot(*zip(*points), marker="o", label=name)
        for name, ceiling in ceilings.items():
            if ceiling.get(key) is not None:
                axes.axhline(ceiling[key], color="black", linestyle="--", linewidth=1, label=f"{name} (ceiling)")
        axes.set(xscale="log", xlabel="bits per image (indices x log2 codebook size, log scale)", ylabel=label)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle("Rate-distortion: decoding from the first k scales of the residual code")
    return _save(figure, path)

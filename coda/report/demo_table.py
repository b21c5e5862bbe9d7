"""The README's demo table, written from the report's own numbers (results/metrics/<name>.json), so
the README quotes what the pipeline measured: ``python -m coda.report.demo_table`` prints it, and
tests/test_readme.py checks the README's copy against results/."""
from __future__ import annotations

import json
import sys
from pathlib import Path

# (experiment, what it adds); the ceiling first, then the ladder in the paper's order
ROWS = [("vae", "the continuous VAE, no quantizer (ceiling)"), ("ablate_vq", "plain VQ, frozen VAE"),
        ("ablate_rvq", "+ residual multi-scale"), ("ablate_attn", "+ attention lookup (CODA quantizer)"),
        ("coda", "+ LoRA, image losses, PatchGAN")]
HEADER = ("| experiment | what | bits / image | PSNR (dB) | SSIM | LPIPS-vgg | colour error (/255) | "
          "codebook use |\n|---|---|---|---|---|---|---|---|")


def row(name: str, what: str, metrics: dict) -> str:
    bits = f"{metrics['bits_per_image']:,.0f}" if metrics.get("bits_per_image") else "-"
    use = f"{100 * metrics['codebook_utilization']:.1f} %" if metrics.get("codebook_utilization") is not None else "-"
    return (f"| `{name}` | {what} | {bits} | {metrics['psnr']:.2f} | {metrics['ssim']:.3f} | "
            f"{metrics['lpips_vgg']:.3f} | {metrics['colour_error']:.1f} | {use} |")


def demo_table(metrics_dir: str | Path = "results/metrics") -> str:
    metrics_dir = Path(metrics_dir)
    lines = [HEADER]
    for name, what in ROWS:
        path = metrics_dir / f"{name}.json"
        if path.is_file():
            lines.append(row(name, what, json.loads(path.read_text())))
    return "\n".join(lines)


if __name__ == "__main__":
    print(demo_table(*sys.argv[1:]))

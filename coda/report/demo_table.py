"""The README's demo table, written from the report's own numbers (<report>/metrics/<name>.json), so
the README quotes what the pipeline measured: ``python -m coda.report.demo_table [METRICS_DIR]`` prints
it; ``make publish`` copies a demo run's results/ to docs/demo/ and writes the table into README.md
(``--readme README.md``), and tests/test_readme.py checks the README's copy against docs/demo/."""
from __future__ import annotations

import argparse
import json
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


START, END = "<!-- demo-table: make publish -->\n", "\n<!-- /demo-table -->"


def write_into(readme: str | Path, table: str) -> None:
    """Replace the table between the README's demo-table markers."""
    readme = Path(readme)
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START.strip()} ... {END.strip()} block")
    head, rest = text.split(START, 1)
    readme.write_text(head + START + table + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics_dir", nargs="?", default="results/metrics")
    parser.add_argument("--readme", help="write the table into this file's demo-table block instead of printing it")
    args = parser.parse_args()
    if args.readme:
        write_into(args.readme, demo_table(args.metrics_dir))
    else:
        print(demo_table(args.metrics_dir))

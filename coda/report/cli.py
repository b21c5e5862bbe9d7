"""`python -m coda.report`: the report stage."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _named_paths(pairs: list[str], option: str) -> dict[str, Path]:
    named = {}
    for pair in pairs or []:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"{option} expects NAME=PATH, got {pair!r}")
        named[name] = Path(path)
    return named


def _experiments_meta(path: Path | None) -> dict:
    """A JSON or YAML mapping, or a params.yaml whose `experiments:` block is that mapping."""
    if path is None:
        return {}
    import yaml

    data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    return data.get("experiments", data) if isinstance(data, dict) else {}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m coda.report", description=__doc__)
    parser.add_argument("--metrics", type=Path, required=True, help="folder of <experiment>.json metrics files")
    parser.add_argument("--reported", type=Path, required=True, help="references/reported.csv")
    parser.add_argument("--out", type=Path, required=True, help="output folder (results/)")
    parser.add_argument("--experiments", type=Path, help="experiment configs (JSON/YAML, or params.yaml)")
    parser.add_argument("--train-log", action="append", metavar="NAME=PATH", help="train_log.tsv per experiment")
    parser.add_argument("--recon", action="append", metavar="NAME=PATH",
                        help="reconstruction samples .npy per experiment; original=VAL.npy for the originals")
    parser.add_argument("--code-counts", action="append", metavar="NAME=PATH", help="code histograms .npy")
    args = parser.parse_args(argv)
    from .build import build_report

    written = build_report(args.metrics, args.reported, args.out, _experiments_meta(args.experiments),
                           _named_paths(args.train_log, "--train-log"), _named_paths(args.recon, "--recon"),
                           _named_paths(args.code_counts, "--code-counts"))
    for path in written.values():
        print(path)
    return written

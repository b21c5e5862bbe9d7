"""The pipeline's stages, one module each: a stage reads its settings from params.yaml and calls the
method (coda/data, coda/vae_train, coda/cache.py, coda/train, coda/evaluation, coda/token_files.py,
coda/report). ``coda <stage>`` (coda/cli.py) runs them; a stage imports the method, never another
stage, so each one's DVC code dependencies are what it runs (tests/test_layout.py derives them).

Shared here: the note an experiment leaves at a scale that has no row for it.
"""
from __future__ import annotations

from pathlib import Path

from ..artifacts import NO_ROW
from ..config import experiment_vae, scale_vaes
from ..files import write_json


def no_row(params: dict, experiment: dict, folder: Path) -> None:
    """An experiment whose VAE this scale does not declare has no row here. DVC gives every scale the same
    stages, so its train and evaluate stages still run: they write only this note into their outputs."""
    reason = (f"experiment {experiment['name']!r} trains on VAE {experiment_vae(experiment)!r}, which scale "
              f"{params['scale']!r} does not declare (its VAEs: {sorted(scale_vaes(params))})")
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / NO_ROW, {"experiment": experiment["name"], "scale": params["scale"], "reason": reason})
    print(f"{reason}: no row at this scale, nothing to do")

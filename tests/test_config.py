"""params.yaml validation and experiment resolution (the first thing every stage does)."""
import copy
import shutil
from pathlib import Path

import pytest
import yaml

from coda.cli import main
from coda.config import ParamsError, experiment_config, load_params, validate_params
from coda.quantizers import build_quantizer

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/params.schema.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def broken(path: str, value):
    params = copy.deepcopy(PARAMS)
    *parents, last = path.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[last] = value
    return params


def test_the_shipped_params_are_valid():
    validate_params(PARAMS, SCHEMA)


@pytest.mark.parametrize("path, value, message", [
    ("experiments.coda.train", {"lrr": 1e-4}, "experiments.coda.train: unknown key(s) ['lrr']"),
    ("experiments.base.quantizer.kind", "cod", "experiments.base.quantizer.kind: 'cod' is not allowed; choose one of"),
    ("scales.demo.experiment.train.batch_size", 0, "scales.demo.experiment.train.batch_size: 0 is less than the minimum of 1"),
    ("experiments.base.train.lr", "fast", "experiments.base.train.lr: 'fast' is not of type 'number'"),
    ("scale", "huge", "scale: 'huge' is not one of the defined scales"),
    ("pipeline.experiments", ["coda", "nope"], "pipeline.experiments: 'nope' is not a block of `experiments`"),
    ("experiments.coda.lora", {"rank": 4, "where": "encoder"}, "experiments.coda.lora"),
    ("evaluate.progressive", [1, 1], "evaluate.progressive: [1, 1] must be all, none or a list of distinct positive"),
    ("evaluate.progressive", "some", "evaluate.progressive: 'some' must be all, none or a list"),
])
def test_bad_values_name_the_key_and_what_is_allowed(path, value, message):
    with pytest.raises(ParamsError) as err:
        validate_params(broken(path, value), SCHEMA)
    assert message in str(err.value)


def test_cli_stops_before_any_work_with_the_message(tmp_path, capsys):
    shutil.copytree(ROOT / "workflow/schemas", tmp_path / "workflow/schemas")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(broken("experiments.coda.train", {"lrr": 1})))
    code = main(["prepare", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "prepared")])
    assert code == 2 and "unknown key(s) ['lrr']" in capsys.readouterr().err
    assert not (tmp_path / "prepared").exists()
    assert main(["prepare", "--params", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "p")]) == 2


def test_experiment_resolution_order():
    params = copy.deepcopy(PARAMS)
    params["scales"]["demo"]["experiments"]["ablate_rvq"] = {"train": {"max_steps": 7, "lr": 1e-3}}
    params["experiments"]["ablate_rvq"]["train"]["lr"] = 2e-3
    resolved = experiment_config(params, "ablate_rvq")
    assert resolved["train"]["max_steps"] == 7           # the scale's per-experiment size
    assert resolved["train"]["lr"] == 2e-3               # the experiment's own block wins
    assert resolved["train"]["grad_clip"] == 10.0        # inherited from base
    assert resolved["quantizer"]["codebook_size"] == PARAMS["scales"]["demo"]["experiment"]["quantizer"]["codebook_size"]
    assert resolved["lora"] is None and resolved["quantizer"]["kind"] == "rvq"
    vq = build_quantizer(dim=8, **experiment_config(params, "ablate_vq")["quantizer"]).config
    assert vq["latent_size"] == PARAMS["scales"]["demo"]["experiment"]["quantizer"]["scales"][-1] and "scales" not in vq
    with pytest.raises(ParamsError, match="not defined"):
        experiment_config(params, "nope")


def test_scale_override_is_validated():
    with pytest.raises(ParamsError, match="scale: 'huge'"):
        load_params(ROOT / "params.yaml", scale="huge")
    assert load_params(ROOT / "params.yaml", scale="tiny")["scale"] == "tiny"

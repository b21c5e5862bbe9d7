"""Trainer building blocks: config, learning-rate schedule, checkpoint files."""
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from coda.discriminators import check_discriminator
from coda.schedule import learning_rate
from coda.train.config import TrainConfig
from coda.train import checkpoint as ckpt
from coda.train import config


def test_schema_train_keys_are_the_config_fields():
    """TrainConfig is the one list of train settings; params.yaml's schema must name the same keys
    and the same choices, and the resumable ones are marked on the fields themselves."""
    schema = yaml.safe_load((Path(__file__).parents[1] / "workflow/schemas/params.schema.yaml").read_text())
    properties = schema["$defs"]["train"]["properties"]
    assert set(properties) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert tuple(properties["data_mode"]["enum"]) == config.DATA_MODES
    assert tuple(properties["discriminator"]["enum"]) == config.DISCRIMINATORS
    assert {"checkpoint_every", "device", "bf16", "compile"} <= config.RESUMABLE_CHANGES
    assert not {"lr", "seed", "data_mode", "max_steps"} & config.RESUMABLE_CHANGES


def test_config_round_trips_through_a_dict():
    cfg = TrainConfig(betas=[0.6, 0.95], max_steps=3)
    assert cfg.betas == (0.6, 0.95)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_dict(None) == TrainConfig()


def test_config_unknown_key_is_named():
    with pytest.raises(ValueError, match="unknown key 'grad_acum'.*did you mean 'grad_accum'"):
        TrainConfig.from_dict({"grad_acum": 2})
    with pytest.raises(ValueError, match="unknown key 'zzz'.*known keys: data_mode"):
        TrainConfig.from_dict({"zzz": 1})
    with pytest.raises(ValueError, match="data_mode"):
        TrainConfig.from_dict({"data_mode": "pixels"})
    with pytest.raises(ValueError, match="grad_accum"):
        TrainConfig.from_dict({"grad_accum": 0})


def test_global_batch_sets_the_accumulation_for_any_process_count():
    """The imagenet recipe (16 per micro-batch, 512 per step) on 1, 4 or 8 GPUs; null keeps grad_accum."""
    from coda.config import ParamsError, experiment_config, load_params

    params = load_params(Path(__file__).parents[1] / "params.yaml")
    recipe = TrainConfig.from_dict(experiment_config({**params, "scale": "imagenet"}, "coda")["train"])
    assert (recipe.batch_size, recipe.global_batch, recipe.epochs) == (16, 512, 10)
    assert [recipe.accumulation(world) for world in (1, 4, 8)] == [32, 8, 4]
    with pytest.raises(ParamsError, match=r"train.global_batch 512 is not a multiple of .* 16 x 3"):  # exit 2
        recipe.accumulation(3)
    assert TrainConfig(batch_size=16, grad_accum=4).accumulation(8) == 4
    with pytest.raises(ValueError, match="global_batch"):
        TrainConfig(global_batch=0)
    with pytest.raises(ValueError, match="invalid train.disc_objective.*choose from"):
        TrainConfig.from_dict({"disc_objective": "wgan"})
    for key, value in (("dino_view", "nearest"), ("dino_heads", "xavier")):
        with pytest.raises(ValueError, match=f"invalid train.{key}.*choose from"):
            check_discriminator("dino", **{key: value})


def test_the_train_settings_and_the_input_check_import_no_torch():
    """The input check runs before every stage, and reads TrainConfig's defaults: both stay light."""
    code = "import sys, coda.external_inputs, coda.train.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_discriminator_auto_choice():
    assert TrainConfig().discriminator_kind == "patchgan"
    assert TrainConfig(dino_weights="/x/dino").discriminator_kind == "dino"
    assert TrainConfig(discriminator="patchgan", dino_weights="/x").discriminator_kind == "patchgan"


def test_the_release_schedule_spans_eight_runs_at_the_paper_scale():
    """The release builds its cosine before accelerate.prepare, so on its 8 processes it spans 8 runs:
    by hand, the rate ends at (1 + cos(pi / 8)) / 2 = 0.962 lr0 and averages (1 + 8 sin(pi / 8) / pi) / 2
    = 0.987 lr0 over the 25,020 steps. The paper scale's coda and coda_f8 default to it."""
    from coda.config import experiment_config, load_params

    params = {**load_params(Path(__file__).parents[1] / "params.yaml"), "scale": "imagenet"}
    steps = 25020
    for name in ("coda", "coda_f8"):
        cfg = TrainConfig.from_dict(experiment_config(params, name)["train"])
        assert (cfg.lr_schedule_span, cfg.processes) == (8, 8)
    rates = [learning_rate(step, steps * 8, 1.0) for step in range(steps)]
    assert round(learning_rate(steps, steps * 8, 1.0), 3) == 0.962 and round(rates[-1], 3) == 0.962
    assert round(sum(rates) / steps, 3) == 0.987
    assert TrainConfig().lr_schedule_span == 1  # elsewhere: cosine to zero at the last step
    with pytest.raises(ValueError, match="lr_schedule_span"):
        TrainConfig(lr_schedule_span=0)


def test_cosine_learning_rate_to_zero():
    assert learning_rate(0, 100, 5e-4) == 5e-4
    assert learning_rate(50, 100, 5e-4) == pytest.approx(2.5e-4)
    assert learning_rate(25, 100, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert learning_rate(100, 100, 5e-4) == pytest.approx(0.0, abs=1e-20)
    rates = [learning_rate(s, 100, 1.0) for s in range(101)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert learning_rate(0, 100, 1.0, warmup_steps=10) == pytest.approx(0.1)


def test_checkpoint_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.5, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"step": 7, "opt": opt.state_dict(), "model": model.state_dict(), "rng": torch.get_rng_state(),
             "nested": {"none": None, "list": [1, 2.5, "x"], "flag": True}}
    path = ckpt.save_checkpoint(tmp_path / "c" / "last.safetensors", state)
    back = ckpt.load_checkpoint(path)
    assert back["step"] == 7 and back["nested"] == {"none": None, "list": [1, 2.5, "x"], "flag": True}
    assert set(back["opt"]["state"]) == {0, 1}                     # integer keys survive
    assert torch.equal(back["rng"], state["rng"])
    for a, b in zip(back["model"].values(), state["model"].values()):
        assert torch.equal(a, b)
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.5, 0.9))
    fresh.load_state_dict(back["opt"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert not list(path.parent.glob("*.tmp"))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = ckpt.save_checkpoint(tmp_path / "last.safetensors", {"step": 1, "w": torch.ones(2)})

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"torn")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(path, {"step": 2, "w": torch.zeros(2)})
    assert ckpt.load_checkpoint(path)["step"] == 1                 # the previous checkpoint is intact


def test_load_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(1)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="not a readable coda training checkpoint"):
        ckpt.load_checkpoint(tmp_path / "plain.safetensors")

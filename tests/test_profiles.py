"""The profiles as Snakemake applies them: SLURM submission arguments and GPU jobs on one machine.

A dry run never reaches submission, so the SLURM test builds every job of the workflow with the
profile's resources and runs the plugin's own validation and sbatch-argument building on it.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GPU_RULES = {"vae", "cache", "train", "reference", "evaluate", "evaluate_vae"}


@pytest.fixture
def work(tmp_path, monkeypatch):
    """The pipeline files in a scratch directory, made the working directory (no GPU visible)."""
    for name in ["Snakefile", "dvc.yaml", "params.yaml", "workflow", "profiles", "references", "models", "coda"]:
        if (ROOT / name).exists():
            (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # Snakemake puts the Snakefile's folder on it
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    return tmp_path


def parse(argv):
    """The command line as the `snakemake` command reads it, profiles included."""
    from snakemake import cli

    return cli.parse_args(argv)[1]


def planned_workflow(argv):
    """The workflow and its planned jobs (all of them: --forceall) under this command line."""
    from snakemake.api import SnakemakeApi
    from snakemake.cli import parse_config
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

    args = parse(argv)
    with SnakemakeApi(OutputSettings(quiet={})) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(cores=args.cores, nodes=args.jobs, resources=args.resources,
                                               overwrite_resources=args.set_resources,
                                               default_resources=args.default_resources),
            config_settings=ConfigSettings(config=parse_config(args.config or [])), workdir=Path.cwd())
        workflow_api.dag(DAGSettings(targets={"results/table1.csv"}, forceall=True))
        workflow = workflow_api._workflow
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True)
        workflow._build_dag()
        return workflow, list(workflow.dag.jobs)


def test_slurm_profile_passes_the_plugin_validation_for_every_job(work):
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="the SLURM plugin is not installed (pip install -e .[slurm])")
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    _, jobs = planned_workflow(["results/table1.csv", "--profile", "profiles/slurm",
                                "--config", "scale=imagenet"])
    assert {job.rule.name for job in jobs} >= GPU_RULES | {"prepare", "report"}
    for job in jobs:
        validate_slurm_extra(job)
        call = get_submit_command(job, {"run_uuid": "u", "slurm_logfile": "log", "comment_str": job.rule.name,
                                        "account": "", "partition": "", "workdir": str(work)})
        call += set_gres_string(job)
        words = shlex.split(call)
        gpus = [word for word in words if word.startswith(("--gpus", "--gres"))]
        cards = 8 if job.rule.name == "train" else 1  # a train job: its train.processes, the release's 8 GPUs
        assert gpus == ([f"--gpus={cards}"] if job.rule.name in GPU_RULES else []), (job.rule.name, call)
        runtime = {"train": "4320", "cache": "480", "tokenize": "480", "evaluate": "240"}.get(job.rule.name, "120")
        assert words[words.index("-t") + 1] == runtime, (job.rule.name, call)


def test_default_profile_is_loaded_by_the_plain_command(work):
    args = parse(["results/table1.csv", "--cores", "all"])
    assert args.printshellcmds and args.rerun_incomplete, "profiles/default was not auto-loaded"


@pytest.mark.parametrize("visible, resources, limit", [("0,1,2", [], 3), ("", [], None), ("0,1,2", ["gpu=1"], 1)])
def test_local_runs_start_at_most_one_gpu_job_per_card(work, monkeypatch, visible, resources, limit):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    workflow, jobs = planned_workflow(["results/table1.csv", "--cores", "all",
                                       *(["--resources", *resources] if resources else [])])
    assert (workflow.global_resources["gpu"].value if "gpu" in workflow.global_resources else None) == limit
    assert {job.rule.name for job in jobs if job.resources.get("gpu")} == GPU_RULES


TOY = """
configfile: "params.yaml"
include: "workflow/rules/common.smk"
rule all:
    input: expand("claims/{i}.json", i=range(6))
rule gpu_job:
    output: "claims/{i}.json"
    resources: gpu=1
    shell: "{PYTHON} -c \\"$CLAIM\\" {output}"
"""
# A GPU job: claim a card as a `coda` GPU command does, hold it for a moment, record what it saw.
CLAIM = """
import json, os, sys, time
from coda.devices import claim_gpu
start = time.time()
card = claim_gpu(lock_dir="locks", wait_s=0)
time.sleep(1.0)
json.dump({"card": card, "visible": os.environ["CUDA_VISIBLE_DEVICES"], "start": start, "end": time.time()},
          open(sys.argv[1], "w"))
"""


def test_plain_command_gives_each_gpu_job_its_own_card(work):
    (work / "Toy.smk").write_text(TOY.replace("{PYTHON}", sys.executable))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": "0,1",
           "CLAIM": CLAIM, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([str(BIN / "snakemake"), "-s", "Toy.smk", "--cores", "6"], cwd=work, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    claims = [json.loads(path.read_text()) for path in sorted((work / "claims").glob("*.json"))]
    assert len(claims) == 6 and all(claim["visible"] == claim["card"] for claim in claims)
    assert {claim["card"] for claim in claims} == {"0", "1"}, "both cards are used"
    for i, a in enumerate(claims):
        for b in claims[i + 1:]:
            assert a["card"] != b["card"] or a["end"] < b["start"] or b["end"] < a["start"], "two jobs on one card"


def test_a_local_run_with_fewer_cards_than_a_train_job_stops_before_any_job(work):
    """The paper scale's train jobs run 8 processes, one card each: on 2 cards the plain command says
    so, and which setting to lower, before it plans or runs anything."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": "0,1"}
    result = subprocess.run([str(BIN / "snakemake"), "-n", "--cores", "all", "results/table1.csv", "--config",
                             "scale=imagenet"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "train.processes asks for more GPUs than this machine has (2): coda 8" in result.stderr
    assert "scales.imagenet.experiment.train.processes" in result.stderr and "Traceback" not in result.stderr

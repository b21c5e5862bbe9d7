"""Snakemake and DVC describe one DAG: same stages, commands, outputs and params (pipeline.md)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PIPELINE_FILES = ["Snakefile", "dvc.yaml", "params.yaml", "workflow", "references", "pyproject.toml"]


def pipeline_copy(tmp_path: Path, scale: str | None = None) -> Path:
    """The pipeline files in a fresh git + DVC repository (the package runs from the venv)."""
    work = tmp_path / "repo"
    work.mkdir()
    for name in PIPELINE_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    if scale:
        params = (work / "params.yaml").read_text()
        (work / "params.yaml").write_text(re.sub(r"^scale: \w+", f"scale: {scale}", params, flags=re.M))
    run(["git", "init", "-q"], work)
    run([str(BIN / "dvc"), "init", "-q"], work)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], work)
    return work


def env() -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
            "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def run(cmd, cwd, check=True, timeout=900):
    result = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def snakemake_jobs(work: Path, scale: str) -> dict:
    """{stage name as DVC names it: {"cmd", "outputs"}} from a forced dry run."""
    text = run([str(BIN / "snakemake"), "results/table1.csv", "-n", "-p", "--forceall", "--cores", "1",
                "--config", f"scale={scale}"], work).stdout
    jobs = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if not rule:
            continue
        wildcard = re.search(r"wildcards: experiment=(\w+)", block)
        name = rule.group(1) + (f"@{wildcard.group(1)}" if wildcard else "")
        outputs = re.search(r"\n\s+output: (.*)", block).group(1).split(", ")
        cmd = re.search(r"Shell command: (.*)", block)
        jobs[name] = {"cmd": cmd.group(1).strip() if cmd else None, "outputs": set(outputs)}
    return jobs


def dvc_stages(work: Path) -> dict:
    from dvc.repo import Repo

    stages = {}
    with Repo(str(work)) as repo:
        for stage in repo.index.stages:
            params = [key for dep in stage.deps if getattr(dep, "params", None) is not None for key in dep.params]
            stages[stage.name] = {"cmd": stage.cmd, "params": params,
                                        "outs": {str(o.def_path): o for o in stage.outs}}
    return stages


@pytest.mark.parametrize("scale", ["demo", "imagenet"])
def test_engines_agree_on_stages_commands_outputs(tmp_path, scale):
    work = pipeline_copy(tmp_path, scale)
    smk, dvc = snakemake_jobs(work, scale), dvc_stages(work)
    assert set(smk) == set(dvc), "the two engines define different stages"
    for name, job in smk.items():
        assert job["cmd"] == dvc[name]["cmd"], f"{name}: shell differs from the DVC cmd"
        for output in job["outputs"]:
            # Either the same path, or a file inside a DVC `persist` output (resumable state that
            # Snakemake must not delete before a job: only its completion marker is declared).
            inside_persist = any(o.persist and Path(output).is_relative_to(p) for p, o in dvc[name]["outs"].items())
            assert output in dvc[name]["outs"] or inside_persist, f"{name}: {output} is not a DVC output"
        for path, out in dvc[name]["outs"].items():
            assert path in job["outputs"] or out.persist, f"{name}: DVC output {path} not declared in Snakemake"


def test_every_rule_tracks_the_params_dvc_declares():
    """Rules pass tracked('<stage>') (values of dvc.yaml's keys), so both engines rerun alike."""
    rules = "".join(p.read_text() for p in (ROOT / "workflow/rules").glob("*.smk"))
    names = re.findall(r"^rule (\w+):", rules, flags=re.M)
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(names) == set(dvc)
    for name in names:
        body = rules.split(f"rule {name}:", 1)[1].split("\nrule ", 1)[0]
        assert f'params: values=tracked("{name}")' in body, name
        assert "log:" in body and "conda:" in body, f"rule {name} needs log: and conda: (snakemake --lint)"
        assert dvc[name].get("do", dvc[name]).get("params"), f"DVC stage {name} declares no params"


def test_dvc_metrics_plots_and_persistence():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert any("results/metrics/${item}.json" in m for m in dvc["evaluate"]["do"]["metrics"])
    assert any("train_log.tsv" in str(p) for p in dvc["train"]["do"]["plots"])
    persistent = [o for o in dvc["train"]["do"]["outs"] if isinstance(o, dict)]
    assert persistent and all(v.get("persist") for o in persistent for v in o.values())
    config = (ROOT / ".dvc/config").read_text()
    assert "analytics = false" in config and "check_update = false" in config


def test_dry_runs_work_without_gpu_or_imagenet(tmp_path):
    work = pipeline_copy(tmp_path)
    out = run([str(BIN / "snakemake"), "results/table1.csv", "-n", "--cores", "2", "--config", "scale=imagenet"], work)
    assert "train" in out.stdout
    assert "imagenet" in run([str(BIN / "snakemake"), "results/table1.csv", "-n", "-p", "--config", "scale=imagenet",
                              "--cores", "1", "--profile", "workflow/profiles/slurm"], work).stdout


def set_param(work: Path, path: str, value) -> None:
    params = yaml.safe_load((work / "params.yaml").read_text())
    node = params
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def check_outputs(work: Path) -> None:
    import pandas as pd
    from PIL import Image

    params = yaml.safe_load((work / "params.yaml").read_text())
    for name in params["pipeline"]["experiments"] + ["vae"]:
        assert (work / f"results/metrics/{name}.json").is_file(), name
    table = pd.read_csv(work / "results/table1.csv")
    assert set(params["pipeline"]["experiments"]) <= set(table["experiment"].dropna())
    assert len(pd.read_csv(work / "results/ablation.csv")) == 4
    figures = sorted((work / "results/figures").glob("*.png"))
    assert len(figures) >= 3
    for png in figures:
        Image.open(png).verify()


def test_tiny_dag_through_snakemake(tmp_path):
    work = pipeline_copy(tmp_path, "tiny")
    snakemake = [str(BIN / "snakemake"), "results/table1.csv", "--cores", "2"]
    run(snakemake, work)
    check_outputs(work)
    assert "Nothing to be done" in run(snakemake, work).stdout + run(snakemake, work).stderr
    # One experiment's parameter: only its train, evaluate and the report rerun.
    set_param(work, "experiments.ablate_vq.train.lr", 1e-3)
    dry = run(snakemake + ["-n"], work)
    planned = re.findall(r"^(\w+)\s+(\d+)$", dry.stdout, flags=re.M)
    assert dict(planned) == {"train": "1", "evaluate": "1", "report": "1", "total": "3"}, dry.stdout
    assert "experiment=ablate_vq" in dry.stdout and "experiment=coda" not in dry.stdout


def test_tiny_dag_through_dvc(tmp_path):
    work = pipeline_copy(tmp_path, "tiny")
    dvc = str(BIN / "dvc")
    run([dvc, "repro"], work)
    check_outputs(work)
    again = run([dvc, "repro"], work).stdout
    assert "Running stage" not in again, again
    (work / ".gitignore").write_text("/work/\n/logs/\n.snakemake/\n")
    run(["git", "add", "-A"], work)
    run(["git", "commit", "-qm", "tiny run"], work)
    # An experiment: only that experiment's train and evaluate (and the report) run again, and the
    # changed run starts over instead of resuming the persisted checkpoint of the old settings.
    exp = run([dvc, "exp", "run", "-S", "+experiments.ablate_vq.train.lr=0.001"], work).stdout
    ran = set(re.findall(r"Running stage '([^']+)'", exp))
    assert ran == {"train@ablate_vq", "evaluate@ablate_vq", "report"}, exp
    shown = json.loads(run([dvc, "exp", "show", "--json"], work).stdout)
    exps = [e for rev in shown for e in (rev.get("experiments") or [])]
    data = [r["data"] for e in exps for r in e["revs"]]
    params = [d["params"]["params.yaml"]["data"]["experiments"]["ablate_vq"] for d in data]
    assert params[0]["train"]["lr"] == 0.001
    metrics = data[0]["metrics"]["results/metrics/ablate_vq.json"]["data"]
    assert 0 <= metrics["codebook_utilization"] <= 1 and metrics["psnr"] > 0

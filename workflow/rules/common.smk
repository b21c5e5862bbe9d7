# Helpers shared by the rules. dvc.yaml is the one table of what each stage tracks: a rule passes the
# values of exactly the params.yaml keys its DVC stage declares (a rule reruns when a value in its
# `params:` changes) and takes the stage's code dependencies as inputs.
import sys
from pathlib import Path

import yaml

EXPERIMENTS = config["pipeline"]["experiments"]
SCALE = config["scale"]
WORK, LOGS = f"work/{SCALE}", f"logs/{SCALE}"  # each scale its own tree: switching never deletes another's work
# The scale's CPU threads: each `coda` command sets them itself (so DVC's runs match), and the
# scheduler counts them here (on 2 cores and 1 thread each, two jobs run side by side).
THREADS = config["scales"][SCALE].get("threads", 1)
DVC_STAGES = yaml.safe_load(open("dvc.yaml"))["stages"]  # run from the repository root


def _spec(stage):
    return DVC_STAGES[stage].get("do", DVC_STAGES[stage])


def _lookup(key):
    value = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def tracked(stage):
    """{key: value} for the params.yaml keys that dvc.yaml's `stage` declares."""
    def values(wildcards):
        item = getattr(wildcards, "experiment", "")
        keys = [k.replace("${scale}", SCALE).replace("${item}", item) for k in _spec(stage).get("params", [])]
        return {key: _lookup(key) for key in keys}
    return values


def code(stage):
    """The package files and shipped models (models/) dvc.yaml's `stage` depends on; a directory as
    its files (.py files in coda/), because Snakemake sees only a directory's own modification time."""
    files = []
    for dep in _spec(stage).get("deps", []):
        if dep.startswith(("coda/", "models")):
            path, pattern = Path(dep), "*.py" if dep.startswith("coda/") else "*"
            files += sorted(str(p) for p in path.rglob(pattern) if p.is_file()) if path.is_dir() else [dep]
    return files


# A local run uses at most its cards at once (a train job of N processes counts N), and each `coda` GPU
# command claims its own cards (coda/devices.py). Without cards GPU jobs run on the CPU, unlimited (a
# train job's ranks then use gloo); the user's --resources gpu=N wins.
from coda.config import train_processes
from coda.devices import gpu_cards


def processes(wildcards):
    """The processes of a train job (train.processes), each on a GPU of its own."""
    return train_processes(config, wildcards.experiment)


GPU_CARDS = gpu_cards()
if workflow.local_exec and GPU_CARDS and "gpu" not in workflow.resource_settings.resources:
    workflow.global_resources["gpu"] = len(GPU_CARDS)
    _needs = {name: train_processes(config, name) for name in EXPERIMENTS}
    _too_many = {name: n for name, n in _needs.items() if n > len(GPU_CARDS)}
    if _too_many:  # before any job: a train job could never start
        sys.exit(f"error: train.processes asks for more GPUs than this machine has ({len(GPU_CARDS)}): "
                 + ", ".join(f"{name} {n}" for name, n in _too_many.items())
                 + f"; set train.processes to at most {len(GPU_CARDS)} in params.yaml (scales.{SCALE}.experiment"
                 ".train.processes, or per experiment); train.global_batch keeps the run the same")

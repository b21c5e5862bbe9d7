"""Helpers the test modules share: the repository, and a copy of the pipeline to run the engines in."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PIPELINE_FILES = ["Snakefile", "dvc.yaml", "params.yaml", "workflow", "profiles", "references", "models", "coda",
                  "pyproject.toml"]


def pipeline_copy(tmp_path: Path, scale: str | None = None) -> Path:
    """The pipeline files in a fresh git + DVC repository (the package runs from the venv)."""
    work = tmp_path / "repo"
    work.mkdir()
    for name in PIPELINE_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, work / name)
    if scale:
        params = (work / "params.yaml").read_text()
        (work / "params.yaml").write_text(re.sub(r"^scale: \w+", f"scale: {scale}", params, flags=re.M))
    run(["git", "init", "-q"], work)
    run([str(BIN / "dvc"), "init", "-q"], work)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], work)
    return work


def fresh_clone(tmp_path: Path) -> Path:
    """What `git clone` of this repository gives, as the working tree would be committed (its tracked and
    untracked-but-not-ignored files): no results/, work/, logs/ or .snakemake/."""
    import pytest

    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    work = tmp_path / "clone"
    for name in filter(None, listed.stdout.split("\0")):
        if (ROOT / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, work / name)
    run(["git", "init", "-q"], work)
    run(["git", "add", "-A"], work)
    run(["git", "commit", "-qm", "clone"], work)
    return work


def env() -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
            "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def run(cmd, cwd, check=True, timeout=900, **extra_env):
    result = subprocess.run(cmd, cwd=cwd, env={**env(), **extra_env}, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def set_param(work: Path, path: str, value) -> None:
    params = yaml.safe_load((work / "params.yaml").read_text())
    node = params
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def planned_jobs(output: str) -> dict[str, str]:
    return dict(re.findall(r"^(\w+)\s+(\d+)$", output, flags=re.M))

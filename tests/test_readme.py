"""Every snakemake / dvc command in the README's code blocks runs as written (as a dry run), so the
README cannot drift from the pipeline again."""
from __future__ import annotations

import re
import shlex
import sys

import pytest
from test_pipeline import BIN, ROOT, pipeline_copy, run


def readme_commands() -> list[str]:
    # Every fenced block, paired in order (a ```python block must not shift the pairing), shell ones read.
    blocks = re.findall(r"```(\w*)\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    commands = []
    for language, block in blocks:
        if language not in ("bash", "sh", "console", ""):
            continue
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line.split(" ")[0] in ("snakemake", "dvc"):
                commands.append(line)
    return commands


def dry_run(command: str, work) -> list[str]:
    """Run ``command`` in ``work`` as a dry run; returns what failed (empty when all is well).

    Snakemake: ``-n``. DVC's own ``--dry`` fails on any clone whose stage outputs do not exist yet
    (treeverse/dvc#9021), so a DVC command that runs or records stages is checked as DVC itself starts
    it: ``-S`` overrides are applied to params.yaml with DVC's Hydra code, coda validates the result,
    and ``dvc dag`` builds the interpolated pipeline (the tiny runs of tests/test_pipeline.py run
    ``dvc repro``, ``dvc commit`` and ``dvc exp run`` for real). Read-only commands (``dvc exp show``,
    ``dvc plots show``) run as they are.
    """
    from dvc.utils.hydra import apply_overrides

    words = shlex.split(command)
    if words[0] == "snakemake":
        steps = [[str(BIN / "snakemake"), "-n", *words[1:]]]
    elif words[1] in ("repro", "exp", "commit") and words[1:3] != ["exp", "show"]:
        overrides = [words[i + 1] for i, w in enumerate(words) if w in ("-S", "--set-param")]
        if overrides:
            apply_overrides(work / "params.yaml", overrides)
        steps = [[sys.executable, "-c", "from coda.config import load_params; load_params()"],
                 [str(BIN / "dvc"), "dag"]]
    else:
        steps = [[str(BIN / "dvc"), *words[1:]]]
    failures = []
    for step in steps:
        result = run(step, work, check=False, timeout=300)
        if result.returncode != 0:
            failures.append(f"{' '.join(step)}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return failures


def test_readme_has_commands():
    commands = readme_commands()
    assert any(c.startswith("snakemake") for c in commands) and any(c.startswith("dvc") for c in commands)


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_as_written(tmp_path, command):
    work = pipeline_copy(tmp_path)
    run(["git", "add", "-A"], work)
    run(["git", "commit", "-qm", "clone"], work)  # `dvc exp show` compares against a commit
    failures = dry_run(command, work)
    assert not failures, "\n".join(failures)


def test_readme_train_line_trains_data_parallel(tmp_path):
    """The README's `coda train` line at the tiny scale with train.processes 2: the command starts 2
    CPU ranks itself and trains one experiment."""
    import json

    from test_pipeline import set_param

    line = next(l.strip() for l in (ROOT / "README.md").read_text().splitlines() if l.strip().startswith("coda train"))
    words = [w.replace("imagenet", "tiny") for w in shlex.split(line)]
    work = pipeline_copy(tmp_path, "tiny")
    set_param(work, "scales.tiny.experiment.train.processes", 2)
    run([str(BIN / "snakemake"), "--cores", "2", "work/tiny/cache/manifest.json"], work)
    result = run([str(BIN / words[0]), *words[1:]], work, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = work / words[words.index("--out") + 1]
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    assert (out / "tokenizer" / "model.safetensors").is_file()


def test_readme_demo_table_is_what_the_pipeline_measured():
    """The README's demo table is coda.report.demo_table's output over the committed results/."""
    from coda.report.demo_table import demo_table

    text = (ROOT / "README.md").read_text()
    start, end = "<!-- demo-table: python -m coda.report.demo_table -->\n", "\n<!-- /demo-table -->"
    assert start in text and end in text
    assert text.split(start, 1)[1].split(end, 1)[0] == demo_table(ROOT / "results" / "metrics")

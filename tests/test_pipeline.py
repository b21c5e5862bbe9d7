"""Snakemake and DVC describe one DAG: same stages, commands, outputs and params (docs/pipeline.md)."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import BIN, ROOT, env, pipeline_copy, planned_jobs, run, set_param

TARGET_RULES = ("all", "tokens")  # the Snakefile's targets: inputs only, no stage of their own


def snakemake_jobs(work: Path, scale: str) -> dict:
    """{stage name as DVC names it: {"cmd", "outputs"}} from a forced dry run of everything."""
    text = run([str(BIN / "snakemake"), "all", "-n", "-p", "--forceall", "--cores", "1",
                "--config", f"scale={scale}"], work).stdout
    jobs = {}
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:)", text):
        rule = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block)
        if not rule or rule.group(1) in TARGET_RULES:
            continue
        wildcard = re.search(r"wildcards: experiment=(\w+)", block)
        name = rule.group(1) + (f"@{wildcard.group(1)}" if wildcard else "")
        outputs = re.search(r"\n\s+output: (.*)", block).group(1).split(", ")
        inputs = re.search(r"\n\s+input: (.*)", block)
        cmd = re.search(r"Shell command: (.*)", block)
        jobs[name] = {"cmd": cmd.group(1).strip() if cmd else None, "outputs": set(outputs),
                      "inputs": set(inputs.group(1).split(", ")) if inputs else set()}
    return jobs


def dvc_stages(work: Path) -> dict:
    from dvc.repo import Repo

    stages = {}
    with Repo(str(work)) as repo:
        for stage in repo.index.stages:
            params = [key for dep in stage.deps if getattr(dep, "params", None) is not None for key in dep.params]
            stages[stage.name] = {"cmd": stage.cmd, "params": params,
                                  "deps": [str(d.def_path) for d in stage.deps if getattr(d, "params", None) is None],
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
        # Inputs: DVC's deps with a code directory as its .py files (Snakemake sees files' times), and
        # a DVC directory dep as the rule outputs inside it.
        deps = set()
        for dep in dvc[name]["deps"]:
            is_code_dir = dep.startswith("coda/") and (work / dep).is_dir()
            deps |= {str(p.relative_to(work)) for p in (work / dep).rglob("*.py")} if is_code_dir else {dep}
        for path in job["inputs"]:
            assert path in deps or any(Path(path).is_relative_to(d) for d in deps), f"{name}: {path} not a DVC dep"
        for dep in deps:
            assert dep in job["inputs"] or any(Path(i).is_relative_to(dep) for i in job["inputs"]), \
                f"{name}: DVC dep {dep} is not a Snakemake input"


def test_every_rule_tracks_the_params_dvc_declares():
    """Rules pass tracked('<stage>') (values of dvc.yaml's keys), so both engines rerun alike."""
    rules = "".join(p.read_text() for p in (ROOT / "workflow/rules").glob("*.smk"))
    names = re.findall(r"^(?:rule|checkpoint) (\w+):", rules, flags=re.M)
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(names) == set(dvc)
    for name in names:
        body = re.split(rf"^(?:rule|checkpoint) {name}:", rules, maxsplit=1, flags=re.M)[1]
        body = re.split(r"\n(?:rule|checkpoint) ", body, maxsplit=1)[0]
        assert f'params: values=tracked("{name}")' in body, name
        assert "log:" in body and "conda:" in body, f"rule {name} needs log: and conda: (snakemake --lint)"
        assert dvc[name].get("do", dvc[name]).get("params"), f"DVC stage {name} declares no params"
        if "scales.${scale}.threads" in dvc[name].get("do", dvc[name])["params"]:
            threads = re.search(r"^    threads: (.*?)\s*(?:#.*)?$", body, flags=re.M).group(1)  # train: for each rank
            assert threads in ("THREADS", "lambda wildcards: THREADS * processes(wildcards)"), \
                f"rule {name}: its threads are the scale's (scales.<scale>.threads)"


def test_dvc_metrics_plots_and_persistence():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert spec["metrics"] == ["results/metrics"]  # numbers only; provenance is not a metric
    curves = next(p["results/curves"] for p in spec["plots"] if isinstance(p, dict) and "results/curves" in p)
    assert curves["x"] == "step" and "loss" in curves["y"]
    assert "results/figures/reconstructions.png" in spec["plots"]
    persistent = {path for stage in ("cache", "train", "tokenize") for o in spec["stages"][stage].get("do", spec["stages"][stage])["outs"]
                  if isinstance(o, dict) for path, v in o.items() if v.get("persist")}
    assert persistent == {"work/${scale}/cache", "work/${scale}/train/${item}/checkpoints",
                          "work/${scale}/tokens/${item}"}
    config = (ROOT / ".dvc/config").read_text()
    assert "analytics = false" in config and "check_update = false" in config


def test_dry_runs_work_without_gpu_or_imagenet(tmp_path):
    work = pipeline_copy(tmp_path)
    out = run([str(BIN / "snakemake"), "results/table1.csv", "-n", "--cores", "2", "--config", "scale=imagenet"], work)
    assert "train" in out.stdout
    assert "imagenet" in run([str(BIN / "snakemake"), "results/table1.csv", "-n", "-p", "--config", "scale=imagenet",
                              "--cores", "1", "--profile", "profiles/slurm"], work).stdout


def test_paper_scale_without_downloads_is_refused_before_any_job(tmp_path):
    """Both engines stop in seconds, before the first job, naming every missing external input."""
    work = pipeline_copy(tmp_path, "imagenet")
    missing = ["data/imagenet/train", "data/imagenet/val", "weights/kl16.safetensors", "weights/dino-vits16",
               "black-forest-labs/FLUX.1-dev"]
    snakemake = run([str(BIN / "snakemake"), "--cores", "1", "results/table1.csv"], work, check=False, timeout=120)
    assert snakemake.returncode != 0 and all(m in snakemake.stderr for m in missing), snakemake.stderr[-2000:]
    assert "Traceback" not in snakemake.stderr
    assert not (work / "work").exists() and not (work / "logs" / "imagenet").exists()  # no job ran
    dvc = run([str(BIN / "dvc"), "repro"], work, check=False, timeout=120)
    output = dvc.stdout + dvc.stderr
    assert dvc.returncode != 0 and all(m in output for m in missing), output[-2000:]
    assert "Traceback" not in output and not (work / "work" / "imagenet" / "prepared").exists()


def check_outputs(work: Path, rows=("coda", "ablate_vq", "ablate_rvq", "ablate_attn", "vae")) -> None:
    import pandas as pd
    from PIL import Image

    for name in rows:
        assert (work / f"results/metrics/{name}.json").is_file(), name
    table = pd.read_csv(work / "results/table1.csv")
    assert set(table["experiment"].dropna()) == set(rows)
    assert len(pd.read_csv(work / "results/ablation.csv")) == 4
    figures = sorted((work / "results/figures").glob("*.png"))
    assert len(figures) >= 3
    for png in figures:
        Image.open(png).verify()


def check_tokens(work: Path, scale: str = "tiny") -> None:
    """The coda experiment's token files: every image, and the val tokens decode to the evaluate
    stage's reconstructions bit for bit, decoded on the scale's CPU threads as every stage runs
    (``scales.<scale>.threads``, whichever engine ran it: CPU convolutions round differently with another)."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from coda.pixels import to_uint8
    from coda.tokenizer import Tokenizer
    from coda.token_files import TokenDataset

    root = work / "work" / scale
    val = TokenDataset(root / "tokens/coda", "val")
    assert len(val) == len(np.load(root / "prepared/val.npy", mmap_mode="r"))
    recon = np.load(root / "eval/coda/recon_samples.npy")
    shown = json.loads((root / "eval/coda/metrics.json").read_text())["recon_sample_indices"]
    params = yaml.safe_load((work / "params.yaml").read_text())["scales"][scale]
    assert not params["cpu_isa"], "this process's kernels are not pinned: decode a pinned scale in a `coda` command"
    tokenizer = Tokenizer.from_pretrained(root / "train/coda/tokenizer")
    default = torch.get_num_threads()
    torch.set_num_threads(params["threads"])
    try:
        batch = next(iter(DataLoader(val, batch_size=params["evaluate"]["batch_size"])))[0]
        decoded = to_uint8(tokenizer.decode(batch)).permute(0, 2, 3, 1).numpy()
    finally:
        torch.set_num_threads(default)
    assert np.array_equal(decoded[shown], recon)


EXPENSIVE = ["vae/vae/*.safetensors", "cache/*.safetensors", "train/*/checkpoints/*.safetensors",
             "eval/*/metrics.json", "prepared/val.npy", "tokens/*/*.safetensors"]


def expensive_files(work: Path, scale: str, patterns=EXPENSIVE) -> dict[str, tuple[int, bytes]]:
    """Modification time and content of what took compute: written again only when recomputed."""
    root = work / "work" / scale
    return {str(p.relative_to(work)): (p.stat().st_mtime_ns, p.read_bytes())
            for pattern in patterns for p in root.glob(pattern)}


def add_second_tiny_scale(work: Path) -> None:
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["scales"]["tiny2"] = {**params["scales"]["tiny"], "prepare": {**params["scales"]["tiny"]["prepare"], "seed": 1}}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
def test_tiny_dag_through_snakemake(tmp_path):
    work = pipeline_copy(tmp_path, "tiny")
    add_second_tiny_scale(work)
    snakemake = [str(BIN / "snakemake"), "results/table1.csv", "--cores", "2"]
    run(snakemake, work)
    check_outputs(work)
    everything = [str(BIN / "snakemake"), "--cores", "2"]  # the default target: + the token files
    run(everything, work)
    check_tokens(work)
    for command in (snakemake, everything):
        again = run(command, work)
        assert "Nothing to be done" in again.stdout + again.stderr
    report = run([str(BIN / "snakemake"), "--report", "results/report.html", "results/table1.csv"], work)
    html = (work / "results/report.html").read_text()
    assert "table1.csv" in html and "reconstructions.png" in html, report.stderr[-2000:]

    # DVC takes over Snakemake's work with one fast command: `dvc commit` records it in dvc.lock.
    run([str(BIN / "dvc"), "commit", "--force", "--quiet"], work)
    status = run([str(BIN / "dvc"), "repro", "--dry"], work).stdout
    assert "Running stage" not in status, status

    # Another scale works in its own tree; switching back plans only the (cheap) report.
    before = expensive_files(work, "tiny")
    run(snakemake + ["--config", "scale=tiny2"], work)
    assert planned_jobs(run(snakemake + ["-n"], work).stdout) == {"report": "1", "total": "1"}
    run(snakemake, work)
    assert expensive_files(work, "tiny") == before

    # One experiment's parameter: only its train, evaluate and the report rerun.
    set_param(work, "experiments.ablate_vq.train.lr", 1e-3)
    dry = run(snakemake + ["-n"], work)
    assert planned_jobs(dry.stdout) == {"train": "1", "evaluate": "1", "report": "1", "total": "3"}, dry.stdout
    assert "experiment=ablate_vq" in dry.stdout and "experiment=coda" not in dry.stdout

    # A parameter fetch also tracks: one call reruns fetch and everything that reads the value
    # (with fetch a plain rule it ran fetch alone and exited 0: snakemake/snakemake#4166).
    set_param(work, "scales.tiny.evaluate.reconstructions", 2)
    run(snakemake, work)
    assert "Nothing to be done" in run(snakemake + ["-n"], work).stdout

    # DVC recomputes coda's training (from scratch) and evaluation: the same bytes as Snakemake's, since
    # the `coda` commands set the scale's threads themselves. Then `snakemake --touch`: nothing to do.
    run([str(BIN / "dvc"), "commit", "--force", "--quiet"], work)
    root = work / "work/tiny"
    by_snakemake = {p: (root / p).read_bytes() for p in ("train/coda/tokenizer/model.safetensors",
                                                          "eval/coda/recon_samples.npy")}
    metrics = json.loads((root / "eval/coda/metrics.json").read_text())
    shutil.rmtree(root / "train/coda/checkpoints")
    run([str(BIN / "dvc"), "repro", "--force", "--single-item", "train@coda", "evaluate@coda"], work)
    assert {p: (root / p).read_bytes() for p in by_snakemake} == by_snakemake, "the engines computed other bits"
    again = json.loads((root / "eval/coda/metrics.json").read_text())
    assert all(again[k] == metrics[k] for k in ("psnr", "ssim", "lpips_vgg", "codebook_utilization"))
    run([str(BIN / "snakemake"), "--cores", "1", "--touch", "results/table1.csv"], work)
    assert "Nothing to be done" in run(snakemake + ["-n"], work).stdout


@pytest.mark.slow
def test_tiny_dag_through_dvc(tmp_path):
    work = pipeline_copy(tmp_path, "tiny")
    add_second_tiny_scale(work)
    dvc = str(BIN / "dvc")
    run([dvc, "repro"], work)
    check_outputs(work)
    check_tokens(work)
    again = run([dvc, "repro"], work).stdout
    assert "Running stage" not in again, again

    # Snakemake takes over DVC's work with one fast command: `snakemake --touch`.
    snakemake = [str(BIN / "snakemake"), "results/table1.csv", "--cores", "2"]
    run([str(BIN / "snakemake"), "--cores", "2", "--touch"], work)
    assert "Nothing to be done" in run(snakemake + ["-n"], work).stdout
    assert "Nothing to be done" in run([str(BIN / "snakemake"), "--cores", "2", "-n"], work).stdout

    # Another scale, and back: prepare, vae and evaluate come from DVC's run cache (checked out again,
    # same bytes); cache and train find their work finished (shards and checkpoints untouched).
    before = expensive_files(work, "tiny")
    set_param(work, "scale", "tiny2")
    run([dvc, "repro"], work)
    set_param(work, "scale", "tiny")
    back = run([dvc, "repro"], work).stdout
    after = expensive_files(work, "tiny")
    assert {k: v[1] for k, v in after.items()} == {k: v[1] for k, v in before.items()}
    untouched = expensive_files(work, "tiny", ["cache/*.safetensors", "train/*/checkpoints/*.safetensors",
                                               "tokens/*/*.safetensors"])
    assert untouched and all(after[k][0] == before[k][0] for k in untouched)
    ran = set(re.findall(r"Running stage '([^']+)'", back))
    experiments = ("coda", "ablate_vq", "ablate_rvq", "ablate_attn", "coda_f8")
    assert ran <= {"cache", "report", "tokenize@coda"} | {f"train@{e}" for e in experiments}, back

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
    metrics = data[0]["metrics"]
    assert 0 <= metrics["results/metrics/ablate_vq.json"]["data"]["codebook_utilization"] <= 1
    columns = [(path, key) for path, m in metrics.items() for key in m["data"]]
    assert len(columns) <= 50 and all(isinstance(metrics[p]["data"][k], (int, float)) for p, k in columns)

    # The README's comparison commands print tables that fit a 200-column terminal, nothing cut.
    comparisons = readme_comparison_commands()
    assert any(c.startswith("dvc exp show") for c in comparisons) and "dvc exp diff" in comparisons
    for command in comparisons:
        shown = run(shlex.split(command), work, COLUMNS="200").stdout
        assert shown.strip() and "…" not in shown and max(map(len, shown.splitlines())) <= 200, f"{command}:\n{shown}"


def readme_comparison_commands() -> list[str]:
    """The README's `dvc exp show`, `dvc exp diff` and `dvc metrics show` lines, as written."""
    lines = [line.split(" #")[0].strip() for language, block in re.findall(r"```(\w*)\n(.*?)```",
                                                                            (ROOT / "README.md").read_text(), flags=re.S)
             if language == "bash" for line in block.splitlines()]
    return [line for line in lines if line.startswith(("dvc exp show", "dvc exp diff", "dvc metrics show"))]


PROBE = """
import json, os, sys
import torch
from coda import cli
def probe(params, **flags):
    print(json.dumps({"isa": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                      "interop": torch.get_num_interop_threads(), "omp": os.environ["OMP_NUM_THREADS"],
                      "mkl_cbwr": os.environ.get("MKL_CBWR")}))
cli.STAGES["fetch"] = cli.STAGES["fetch"]._replace(module="__main__", function="probe")
sys.exit(cli.main(["fetch", "--scale", sys.argv[1], "--out", "unused.json"]))
"""


@pytest.mark.parametrize("scale", ["demo", "tiny"])
def test_stage_commands_set_the_scales_threads_and_instruction_set(tmp_path, scale):
    """Whichever engine starts a stage, the command itself sets scales.<scale>.threads and cpu_isa."""
    import platform

    work = pipeline_copy(tmp_path)
    block = yaml.safe_load((work / "params.yaml").read_text())["scales"][scale]
    environment = {k: v for k, v in env().items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR")}
    out = subprocess.run([sys.executable, "-c", PROBE, scale], cwd=work, env={**environment, "OMP_NUM_THREADS": "2"},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["threads"] == seen["interop"] == block["threads"] and seen["omp"] == str(block["threads"])
    if block["cpu_isa"] and platform.machine() in ("x86_64", "AMD64"):
        assert seen["isa"] == block["cpu_isa"].upper() and seen["mkl_cbwr"] == block["cpu_isa"].upper()
    elif not block["cpu_isa"]:
        assert seen["mkl_cbwr"] is None

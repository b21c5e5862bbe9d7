"""Faults from outside the project end in one line naming the problem and what to do, a non-zero exit,
nothing half-written, and a rerun that finishes with the bytes of an undisturbed run: the disk filling
while a stage writes (ENOSPC, EFBIG), Ctrl-C during training (SIGINT to a real `coda train` process).
"""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from coda import files
from coda.cli import main
from test_pipeline import ROOT
from test_train import _latent_cache, _latents_experiment, _params, tiny_vae  # noqa: F401 (a fixture)


@pytest.fixture
def stage(tmp_path, tiny_vae):  # noqa: F811
    """A `coda train` command line of a tiny latents-mode experiment (checkpoints every 2 steps)."""
    g = torch.Generator().manual_seed(0)
    cache = _latent_cache(tmp_path / "cache", torch.randn(16, 4, 8, 8, generator=g), torch.full((16, 4, 8, 8), -6.0))
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae/vae").symlink_to(tiny_vae)
    experiment = _latents_experiment(max_steps=6)
    experiment["quantizer"] = {k: v for k, v in experiment["quantizer"].items() if k != "dim"}

    def command(out, **train):
        params = _params({**experiment, "train": {**experiment["train"], **train}}, latent={})
        path = tmp_path / f"params-{out}.yaml"
        path.write_text(yaml.safe_dump(params))
        return ["train", "--params", str(path), "--experiment", "latent", "--prepared", str(tmp_path / "none"),
                "--vae", str(tmp_path / "vae"), "--cache", str(cache), "--out", str(tmp_path / out)]
    return command


def _leftovers(folder):
    return sorted(p.name for p in folder.rglob(".*.tmp"))


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EFBIG])
def test_a_full_disk_while_training_is_one_line_and_the_rerun_ends_as_an_undisturbed_run(
        stage, tmp_path, capsys, monkeypatch, number):
    assert main(stage("reference")) == 0
    from coda.train import checkpoint

    real_save, calls = checkpoint.save_file, []

    def save_until_the_disk_fills(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:  # the second checkpoint: half of it written, then no room
            with open(filename, "wb") as f:
                f.write(b"\0" * 100)
            raise OSError(number, os.strerror(number))
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", save_until_the_disk_fills)
    capsys.readouterr()
    assert main(stage("out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("coda train")]
    assert len(lines) == 1 and "Traceback" not in "\n".join(err)
    reason = "no space left on the device" if number == errno.ENOSPC else "the file is too large for the file system"
    assert lines[0].startswith(f"coda train: error: {reason} while writing ") and "step-00000004" in lines[0]
    assert "rerun the same command" in lines[0]
    out = tmp_path / "out"
    assert _leftovers(out) == [] and sorted(p.name for p in (out / "checkpoints").glob("step-*")) == \
        ["step-00000002.safetensors"]
    assert not (out / "tokenizer").exists()

    monkeypatch.setattr(checkpoint, "save_file", real_save)  # space freed
    assert main(stage("out")) == 0
    assert json.loads((out / "run.json").read_text())["resumed_from"] == [2]
    for name in ("tokenizer/model.safetensors", "tokenizer/config.json"):
        assert (out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes()
    steps = [line.split("\t")[0] for line in (out / "train_log.tsv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4", "5", "6"]


def test_a_message_names_the_file_when_a_native_writer_reports_the_full_disk(tmp_path):
    """safetensors writes from Rust: its error carries the errno only in its text."""
    from safetensors import SafetensorError

    with pytest.raises(files.DiskFullError, match=r"no space left on the device while writing .*x\.bin"):
        with files.atomic_path(tmp_path / "x.bin") as temporary:
            temporary.write_bytes(b"half")
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                  'message: "No space left on device" })')
    assert list(tmp_path.iterdir()) == []
    assert files.out_of_space(RuntimeError("a bug")) is None


def test_the_log_file_filling_the_disk_still_shows_the_message(stage, tmp_path, capfd, monkeypatch):
    """--log tees everything into a file: when its own writes fail, the console still gets the error."""
    from coda import cli

    class FullFile:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli, "open", lambda *a, **k: FullFile(), raising=False)
    stdout, stderr = sys.stdout, sys.stderr
    try:
        code = main(stage("out") + ["--log", str(tmp_path / "train.log")])
    finally:
        sys.stdout, sys.stderr = stdout, stderr
    assert code == 0  # the run itself does not need its log file
    assert "Traceback" not in capfd.readouterr().err


RUN = """
import sys
from coda.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_during_training_is_one_line_exit_130_and_the_rerun_ends_as_an_undisturbed_run(stage, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-c", RUN]
    reference = subprocess.run(run + stage("reference", max_steps=120, checkpoint_every=10), env=env, cwd=ROOT, capture_output=True,
                               text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]

    process = subprocess.Popen(run + stage("out", max_steps=120, checkpoint_every=10), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    checkpoints = tmp_path / "out/checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("step-0000002*.safetensors")) and time.monotonic() < deadline:
        time.sleep(0.05)  # well into the run: past its checkpoint of step 20
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err[-2000:]
    lines = [line for line in err.strip().splitlines() if line.startswith("coda train")]
    assert len(lines) == 1 and "Traceback" not in err and "KeyboardInterrupt" not in err
    assert lines[0].startswith("coda train: interrupted;") and "rerun the same command" in lines[0]
    out = tmp_path / "out"
    assert _leftovers(out) == [] and not (out / "tokenizer").exists()

    rerun = subprocess.run(run + stage("out", max_steps=120, checkpoint_every=10), env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert json.loads((out / "run.json").read_text())["resumed_from"]
    for name in ("tokenizer/model.safetensors", "tokenizer/config.json"):
        assert (out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes()
    steps = [int(line.split("\t")[0]) for line in (out / "train_log.tsv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 121))


def test_a_gpu_scale_without_a_usable_gpu_stops_at_once_unless_the_cpu_is_asked_for(stage, tmp_path, capsys,
                                                                                      monkeypatch):
    """No silent CPU training at the paper scale: `device: auto` at a scale with require_gpu stops before
    any work, naming the torch build and the driver; `device: cpu` runs."""
    from coda import devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)

    def at_gpu_scale(argv):
        path = argv[argv.index("--params") + 1]
        params = yaml.safe_load(open(path))
        params["scales"]["test"]["require_gpu"] = True
        open(path, "w").write(yaml.safe_dump(params))
        return argv

    assert main(at_gpu_scale(stage("out", device="auto"))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("coda train: error: scale 'test' needs a GPU")
    assert "built for CUDA 12.4" in err[0] and "no NVIDIA driver" in err[0] and "train.device: cpu" in err[0]
    assert not (tmp_path / "out").exists()
    assert main(at_gpu_scale(stage("cpu", device="cpu"))) == 0
    assert json.loads((tmp_path / "cpu/run.json").read_text())["device"] == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)   # with a GPU, auto passes the check
    devices.check_gpu("test", True, "auto")


def test_the_paper_scale_requires_a_gpu():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["scales"]["imagenet"]["require_gpu"] is True
    assert params["scales"]["imagenet"]["experiment"]["train"]["device"] == "auto"
    assert not params["scales"]["demo"].get("require_gpu") and not params["scales"]["tiny"].get("require_gpu")

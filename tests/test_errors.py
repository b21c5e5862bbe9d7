"""A user's mistake ends with one message naming the file or key and exit status 2; --debug (or
CODA_DEBUG=1) shows the traceback; a bug keeps its traceback."""
import io

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from coda.cli import main
from coda.files import UnreadableFileError
from coda.tokenizer import Tokenizer
from helpers import ROOT


def write_params(tmp_path, **changes):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in changes.items():
        node = params
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_a_truncated_released_checkpoint_is_named_with_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the schema is found beside params.yaml or in the working directory
    vae_file, quantizer_file = tmp_path / "vae_ema.pth", tmp_path / "quantizer_ema.pth"
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buffer)
    vae_file.write_bytes(buffer.getvalue()[:40])      # a download cut short
    quantizer_file.write_bytes(buffer.getvalue())
    params = write_params(tmp_path, **{"experiments.released.repo": None,  # local files, not the hub repository
                                       "experiments.released.vae_file": str(vae_file),
                                       "experiments.released.quantizer_file": str(quantizer_file)})
    argv = ["train", "--params", str(params), "--experiment", "released", "--prepared", "p", "--vae", "v",
            "--cache", "c", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("coda train: error:") and str(vae_file) in err and "download it again" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(UnreadableFileError):
        main(argv + ["--debug"])
    monkeypatch.setenv("CODA_DEBUG", "1")
    with pytest.raises(UnreadableFileError):
        main(argv)


def test_a_bad_image_under_on_bad_image_error_is_named_with_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    for split in ("train", "val"):
        folder = tmp_path / split / "n01"
        folder.mkdir(parents=True)
        Image.fromarray(np.full((40, 48, 3), 128, np.uint8)).save(folder / "good.jpg")
    (tmp_path / "val" / "n01" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    params = write_params(tmp_path, **{
        "scale": "imagenet", "prepare.on_bad_image": "error",
        "scales.imagenet.prepare": {"source": "folder", "train_dir": str(tmp_path / "train"),
                                    "val_dir": str(tmp_path / "val"), "resolution": 32},
        "scales.imagenet.vae": {"source": "train_small"}, "scales.imagenet.extra_vaes": {},  # no FLUX VAE,
        "pipeline.experiments": ["coda"],                                                     # so no f8 row
        "scales.imagenet.experiment.train.discriminator": "patchgan",  # no DINO weights needed here
        "scales.imagenet.evaluate.require_rfid": False})  # nor Inception weights
    assert main(["prepare", "--params", str(params), "--out", str(tmp_path / "prepared")]) == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "on_bad_image: skip" in err and "Traceback" not in err
    assert (tmp_path / "prepared" / "prepare_report.json").is_file()  # the report is kept


def test_a_corrupt_tokenizer_directory_is_named(tmp_path):
    from coda.quantizers import build_quantizer
    from coda.vae import ContinuousVAE

    vae = ContinuousVAE.small(seed=0, block_out_channels=[8, 8], norm_num_groups=8, latent_channels=4)
    Tokenizer(vae, build_quantizer(kind="vq", dim=4, codebook_size=8, latent_size=4)).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UnreadableFileError, match=f"{tmp_path} is not a readable tokenizer directory"):
        Tokenizer.from_pretrained(tmp_path)


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    import coda.stages.report

    def broken(params, **paths):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(coda.stages.report, "report", broken)
    with pytest.raises(ZeroDivisionError):
        main(["report", "--reported", "r", "--prepared", "p", "--train", "t", "--eval", "e", "--out", str(tmp_path)])


def test_version_and_a_help_text_on_every_flag_of_every_command(capsys):
    from coda import __version__
    from coda.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"coda {__version__}"
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    missing = [f"coda {name} {action.option_strings or action.dest}" for name, sub in commands.items()
               for action in sub._actions if not action.help]
    assert not missing, missing


def test_dvc_plots_and_the_html_report_are_ignored():
    import subprocess

    ignored = subprocess.run(["git", "check-ignore", "dvc_plots/index.html", "results/report.html"], cwd=ROOT,
                             capture_output=True, text=True)
    assert ignored.stdout.split() == ["dvc_plots/index.html", "results/report.html"]

"""The paper scale end to end on CPU: Snakemake runs `scale=imagenet` for both Table 1 rows down to
results/table1.csv, on stand-ins for everything a user brings, each in the form users get it:

- ImageNet: class sub-folders of JPEGs of several sizes with a few bad files, at data/imagenet/{train,val};
- MAR's weights/kl16.safetensors: a random MAR KL-16 in the exact released layout;
- the FLUX.1 VAE: a random FLUX-architecture diffusers VAE in the Hugging Face cache under
  black-forest-labs/FLUX.1-dev, subfolder vae (offline, as after `hf download`);
- weights/dino-vits16: a random ViT-S/16 in facebook/dino-vits16's layout.

params.yaml's paper scale is used as it is (256 px, V = 16384 / 65536, the release's scales, LoRA
targets, DINO discriminator, the release's 8-process train jobs as planned) except for the run size:
one optimizer step of 2 images per experiment on 2 processes (gloo; the dry run plans the shipped 8)
and 2 validation images (a CPU cannot take the 512- and 288-image steps), no Inception weights (none
offline: rFID is reported missing) and no rate-distortion decodes (unit-tested in test_evaluate.py;
here they were two thirds of the run).
"""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from helpers import BIN, pipeline_copy, planned_jobs, run, set_param
from test_data import make_bad, save, smooth
from test_discriminators import _legacy_keys, _random_vit
from test_external_inputs import put_in_hf_cache

pytestmark = pytest.mark.slow  # the whole paper path, end to end

ROWS = ["coda", "ablate_vq", "ablate_rvq", "ablate_attn", "coda_f8"]
SIZES = [(300, 400), (256, 256), (512, 341), (200, 180)]  # (height, width): larger, exact, smaller than 256


def fake_imagenet(root):
    for c, name in enumerate(["n01440764", "n01443537"]):
        for i, (h, w) in enumerate(SIZES):
            save(root / "train" / name / f"{name}_{i}.JPEG", Image.fromarray(smooth(h, w, 10 * c + i)), quality=90)
    make_bad(root / "train" / "n01440764")
    for i, (h, w) in enumerate(SIZES[:3]):
        save(root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG", Image.fromarray(smooth(h, w, 50 + i)), quality=90)
    (root / "val" / "ILSVRC2012_val_00000009.JPEG").write_bytes(b"")


def random_mar_kl16(path):
    """Random weights in MAR's kl16.safetensors layout (LDM key names and shapes)."""
    from safetensors.torch import save_file

    from coda.compat import ldm
    from coda.compat.vae import build_vae, export_official_vae_state_dict

    settings = {**ldm.MAR_KL16, "lora_rank": None}
    torch.manual_seed(1)
    state = export_official_vae_state_dict(build_vae(settings), settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, path)


def random_flux_vae_in_hf_cache(cache):
    from diffusers import AutoencoderKL

    from coda.compat.vae import FLUX_VAE

    snapshot = put_in_hf_cache(cache, "black-forest-labs/FLUX.1-dev", {"model_index.json": b"{}"})
    torch.manual_seed(2)
    AutoencoderKL(**FLUX_VAE).save_pretrained(snapshot / "vae")


def random_dino(directory):
    from coda.discriminators.dino import VIT_S16_CONFIG
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    save_file(_legacy_keys(_random_vit(VIT_S16_CONFIG).state_dict()), directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(VIT_S16_CONFIG))


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper")
    work = pipeline_copy(tmp, "imagenet")
    fake_imagenet(work / "data/imagenet")
    random_mar_kl16(work / "weights/kl16.safetensors")
    random_dino(work / "weights/dino-vits16")
    random_flux_vae_in_hf_cache(tmp / "hf")
    for key, value in {"scales.imagenet.experiment.train.max_steps": 1,
                       "scales.imagenet.experiment.train.batch_size": 1,
                       "scales.imagenet.experiment.train.global_batch": 2,
                       "scales.imagenet.experiments.coda_f8.train.batch_size": 1,
                       "scales.imagenet.experiments.coda_f8.train.global_batch": 2,
                       "scales.imagenet.evaluate.max_images": 2,
                       # no GPU here: the CPU asked for explicitly (scales.imagenet.require_gpu refuses `auto`)
                       "scales.imagenet.experiment.train.device": "cpu",
                       # no Inception weights offline (rFID is reported missing), no rate-distortion decodes
                       "scales.imagenet.evaluate.require_rfid": False, "evaluate.progressive": "none"}.items():
        set_param(work, key, value)
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_CACHE", str(tmp / "hf"))  # test_pipeline.run passes os.environ on, with HF_HUB_OFFLINE=1
    mp.setenv("CUDA_VISIBLE_DEVICES", "")  # no card: the train jobs' ranks run on the CPU (gloo)
    command = [str(BIN / "snakemake"), "--cores", "2", "results/table1.csv", "--config", "scale=imagenet"]
    shipped = run(command + ["-n"], work).stdout  # train.processes as shipped: the release's 8
    set_param(work, "scales.imagenet.experiment.train.processes", 2)  # run at 2 processes
    set_param(work, "scales.imagenet.threads", 1)  # of each process: the shipped 8 would oversubscribe 2 cores
    planned = planned_jobs(run(command + ["-n"], work).stdout)
    run(command, work, timeout=3000)
    yield work, planned, shipped
    mp.undo()


def test_train_jobs_plan_eight_processes_and_run_at_two(paper_run):
    work, _, shipped = paper_run
    assert len(re.findall(r"^\s*resources: .*\bgpu=8\b", shipped, flags=re.M)) == len(ROWS)  # one per train job
    for name in ROWS:
        record = json.loads((work / f"work/imagenet/train/{name}/run.json").read_text())
        assert (record["world_size"], record["grad_accum"], record["global_batch"]) == (2, 1, 2), name
        assert record["config"]["train"]["lr_schedule_span"] == 8


def test_both_rows_and_both_ceilings_reach_table1(paper_run):
    work, planned, _ = paper_run
    assert planned["train"] == "5" and planned["evaluate"] == "5" and planned["evaluate_vae"] == "1"
    table = pd.read_csv(work / "results/table1.csv")
    computed = table[table["source"] == "computed"].set_index("experiment")
    assert set(computed.index) == set(ROWS) | {"vae", "vae_flux"}
    f16, f8 = computed.loc["coda"], computed.loc["coda_f8"]
    assert (f16["vae"], f16["downsample"], f16["indices_per_image"], f16["codebook_size"]) == (
        "MAR KL-16 VAE", "16", 680, 16384)
    assert (f8["vae"], f8["downsample"], f8["indices_per_image"], f8["codebook_size"]) == (
        "black-forest-labs/FLUX.1-dev/vae", "8", 2240, 65536)
    assert computed.loc["vae_flux", "downsample"] == "8" and computed.loc["vae", "downsample"] == "16"
    assert (computed["resolution"] == 256).all() and np.isfinite(computed["psnr"].astype(float)).all()
    reported = table[table["source"] != "computed"]["method"].tolist()
    assert "CODA (FLUX.1 VAE)" in reported and "CODA (MAR KL-16 VAE)" in reported
    assert len(pd.read_csv(work / "results/ablation.csv")) == 4  # the paper's ladder: f16 only
    provenance = json.loads((work / "results/provenance/coda_f8.json").read_text())
    assert provenance["num_images"] == 2 and provenance["downsample"] == 8


def test_the_real_paths_ran(paper_run):
    work, _, _ = paper_run
    root = work / "work/imagenet"
    report = json.loads((root / "prepared/prepare_report.json").read_text())
    assert report["train"]["skipped"] >= 3 and report["val"]["skipped"] == 1   # the bad files, reported
    assert json.loads((root / "vae/vae_info.json").read_text())["source"] == "mar"
    flux = json.loads((root / "vae/flux/vae_info.json").read_text())
    assert (flux["source"], flux["path"], flux["subfolder"], flux["latent_channels"]) == (
        "pretrained", "black-forest-labs/FLUX.1-dev", "vae", 16)
    f16, f8 = (json.loads((root / f"train/{n}/run.json").read_text()) for n in ("coda", "coda_f8"))
    for record in (f16, f8):
        assert record["discriminator"]["kind"] == "dino" and record["discriminator"]["weights"] == "weights/dino-vits16"
        assert record["global_batch"] == 2 and record["data_mode"] == "images"
    assert (f16["adaptive_weight_target"], f8["adaptive_weight_target"]) == ("f16", "f8")
    assert f16["config"]["lora"]["targets"] == ["conv1", "conv2", "upsample", "downsample"]
    assert f8["config"]["lora"]["targets"] == ["conv1", "conv2"]
    assert f8["config"]["quantizer"]["scales"] == [1, 2, 3, 4, 6, 9, 13, 18, 24, 32]
    from safetensors import safe_open

    with safe_open(str(root / "train/coda_f8/tokenizer/model.safetensors"), "pt") as f:
        adapted = {k.split(".lora_A.")[0] for k in f.keys() if ".lora_A." in k}
    assert len(adapted) == 48 and not [k for k in adapted if "sample" in k]
    with safe_open(str(root / "train/coda/tokenizer/model.safetensors"), "pt") as f:
        assert any("upsamplers" in k and ".lora_A." in k for k in f.keys())
    for name in ROWS:
        assert (root / f"eval/{name}/metrics.json").is_file(), name
    assert (root / "eval/vae/flux/metrics.json").is_file()

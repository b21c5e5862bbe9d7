"""Table 1's f8 row (experiment `coda_f8` on the FLUX.1 VAE) as the paper scale configures it, and the
scales that do not declare its VAE (docs/pipeline.md, "Several VAEs at one scale")."""
import json
import subprocess
import sys

import pytest
import torch

from coda.compat.release import OFFICIAL_SETTINGS
from coda.compat.vae import FLUX_VAE
from coda.config import ParamsError, experiment_config, load_params, scale_experiments, scale_vaes, validate_params
from coda.losses import adaptive_weight_layer
from coda.lora import add_lora, lora_target_names
from coda.vae import ContinuousVAE
from helpers import ROOT


@pytest.fixture(scope="module")
def paper():
    return load_params(ROOT / "params.yaml", scale="imagenet")


def flux_on_meta() -> ContinuousVAE:
    from diffusers import AutoencoderKL

    with torch.device("meta"):  # names and shapes only: no memory, no init time
        return ContinuousVAE(AutoencoderKL(**FLUX_VAE))


def test_f8_experiment_adapts_the_48_resnet_convs_of_the_flux_vae_and_no_resampling_conv(paper):
    lora = experiment_config(paper, "coda_f8")["lora"]
    vae = flux_on_meta()
    adapted = add_lora(vae, **lora)
    # encoder: 4 down blocks x 2 resnets + 2 mid resnets; decoder: 2 mid + 4 up blocks x 3 resnets; 2 convs each
    assert len(adapted) == 48 == (4 * 2 + 2 + 2 + 4 * 3) * 2
    assert not [name for name in adapted if "downsample" in name or "upsample" in name]
    assert all(name.rsplit(".", 1)[1] in ("conv1", "conv2") for name in adapted)
    # the f16 list would also adapt diffusers' 3 downsamplers and 3 upsamplers convs of this VAE
    f16 = experiment_config(paper, "coda")["lora"]["targets"]
    assert len(lora_target_names(flux_on_meta(), f16)) == 54
    assert adaptive_weight_layer(vae, "f8").shape == (128, lora["rank"], 1, 1)  # last conv2 of the top up block


def test_f8_row_is_the_released_f8_recipe(paper):
    f8, released = experiment_config(paper, "coda_f8"), OFFICIAL_SETTINGS["f8"]
    assert f8["variant"] == "f8" and f8["vae"] == "flux"
    assert f8["quantizer"]["codebook_size"] == released["quantizer"]["codebook_size"] == 65536
    assert f8["quantizer"]["scales"] == released["quantizer"]["scales"] == [1, 2, 3, 4, 6, 9, 13, 18, 24, 32]
    assert sum(s * s for s in f8["quantizer"]["scales"]) == 2240  # indices per image, as reported.csv says
    assert f8["lora"]["rank"] == released["vae"]["lora_rank"] == 32
    assert f8["lora"]["targets"] == released["vae"]["lora_targets"] == ["conv1", "conv2"]
    train = f8["train"]
    assert (train["batch_size"], train["global_batch"]) == (12, 12 * 3 * 8)  # 12 x 3 accumulation on 8 GPUs
    assert train["discriminator"] == "dino" and train["data_mode"] == "images"
    flux = scale_vaes(paper)["flux"]
    assert flux == {"source": "pretrained", "path": "black-forest-labs/FLUX.1-dev", "subfolder": "vae"}
    f16 = experiment_config(paper, "coda")
    assert (f16["quantizer"]["codebook_size"], f16["train"]["global_batch"]) == (16384, 512) and "vae" not in f16


def test_the_ladder_is_f16_only_and_the_paper_scale_has_both_rows(paper):
    assert scale_experiments(paper) == ["coda", "ablate_vq", "ablate_rvq", "ablate_attn", "coda_f8"]
    for rung in ("ablate_vq", "ablate_rvq", "ablate_attn"):
        assert "vae" not in experiment_config(paper, rung)  # the scale's `vae`: MAR KL-16
    for scale in ("demo", "tiny"):
        params = load_params(ROOT / "params.yaml", scale=scale)
        assert list(scale_vaes(params)) == ["vae"]
        assert scale_experiments(params) == ["coda", "ablate_vq", "ablate_rvq", "ablate_attn"]


def schema():
    import yaml

    return yaml.safe_load((ROOT / "workflow/schemas/params.schema.yaml").read_text())


def test_a_vae_name_no_scale_declares_is_refused(paper):
    paper = json.loads(json.dumps(paper))
    paper["experiments"]["coda_f8"]["vae"] = "flxu"
    with pytest.raises(ParamsError, match=r"experiments.coda_f8.vae: 'flxu' is no scale's VAE"):
        validate_params(paper, schema())


def test_an_extra_vae_cannot_train_from_the_cache_of_the_scale_vae(paper):
    paper = json.loads(json.dumps(paper))
    paper["experiments"]["coda_f8"]["train"] = {"quantizer_warmup_steps": 10}
    with pytest.raises(ParamsError, match="the latent cache holds the scale's `vae` only"):
        validate_params(paper, schema())
    paper["scales"]["imagenet"]["extra_vaes"]["vae"] = {"source": "mar"}  # the scale's own name is taken
    with pytest.raises(ParamsError, match="extra_vaes"):
        validate_params(paper, schema())


def test_an_experiment_without_its_vae_only_leaves_a_note(tmp_path):
    """DVC gives every scale the same stages: at tiny scale coda_f8's stages write a note, nothing else."""
    out = tmp_path / "train"
    command = [sys.executable, "-m", "coda", "train", "--params", str(ROOT / "params.yaml"), "--scale", "tiny",
               "--experiment", "coda_f8", "--prepared", "none", "--vae", "none", "--cache", "none", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    note = json.loads((out / "tokenizer" / "not_at_this_scale.json").read_text())
    assert note["scale"] == "tiny" and "'flux'" in note["reason"]
    assert (out / "train_log.tsv").read_text() == "step\n" and (out / "checkpoints").is_dir()

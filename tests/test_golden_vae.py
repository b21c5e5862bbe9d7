"""The MAR-architecture VAE with LoRA reproduces the reference implementation's outputs
(tests/data/compat/golden_mar_vae_lora_tiny.*: ch 32, LoRA rank 4 with non-zero up weights)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from coda.compat.vae import export_official_vae_state_dict, load_mar_vae, load_official_vae

TOLERANCE = {"atol": 1e-4, "rtol": 0.0}


@pytest.fixture(scope="module")
def golden(compat_dir):
    stem = compat_dir / "golden_mar_vae_lora_tiny"
    tensors = load_file(str(stem.with_suffix(".safetensors")))
    settings = json.loads(stem.with_suffix(".json").read_text())
    params = {k.removeprefix("param."): v for k, v in tensors.items() if k.startswith("param.")}
    return tensors, settings, params


@pytest.fixture(scope="module")
def vae(golden):
    _, settings, params = golden
    return load_official_vae(params, settings).eval()


def test_architecture_from_settings(vae):
    # attention at LDM curr_res 16 of resolution_param 256: only the last encoder level
    assert vae.config["down_block_types"] == ["DownEncoderBlock2D"] * 4 + ["AttnDownEncoderBlock2D"]
    assert vae.config["up_block_types"] == ["UpDecoderBlock2D"] * 5
    assert vae.downsample_factor == 16


def test_posterior_matches_reference(vae, golden):
    tensors = golden[0]
    with torch.no_grad():
        posterior = vae.encode(tensors["image"])
    torch.testing.assert_close(posterior.mean, tensors["posterior_mean"], **TOLERANCE)
    torch.testing.assert_close(posterior.logvar, tensors["posterior_logvar"], **TOLERANCE)


def test_decoded_mean_matches_reference(vae, golden):
    tensors = golden[0]
    # reference decodes the raw mean; vae.decode takes a normalised latent
    with torch.no_grad():
        decoded = vae.decode(vae.normalize(tensors["posterior_mean"]))
    torch.testing.assert_close(decoded, tensors["decoded_mean"], **TOLERANCE)


def test_lora_branch_is_active(golden, tmp_path):
    """The same base weights without the LoRA branch decode differently, so the match above
    exercises the adapters; also covers load_mar_vae with non-default LDM settings."""
    tensors, settings, params = golden
    base_path = tmp_path / "base.safetensors"
    save_file({k: v for k, v in params.items() if ".lora_layer." not in k}, str(base_path))
    base = load_mar_vae(base_path, settings).eval()
    with torch.no_grad():
        decoded = base.decode(base.normalize(tensors["posterior_mean"]))
    assert (decoded - tensors["decoded_mean"]).abs().max() > 1e-2


def test_official_export_round_trip(vae, golden):
    _, settings, params = golden
    exported = export_official_vae_state_dict(vae, settings)
    assert set(exported) == set(params)
    for key, value in params.items():
        assert torch.equal(exported[key], value), key

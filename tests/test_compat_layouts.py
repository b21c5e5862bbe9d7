"""Full-size state-dict layouts of the released files (tests/data/compat/*_keys.tsv).

Weights are broadcast zeros (no memory); models are built but never run."""

import pytest
import torch
from diffusers import AutoencoderKL

from coda.compat import ldm
from coda.compat.vae import (CODA_FLUX8_SETTINGS, CODA_MAR16_SETTINGS, DIFFUSERS_ARCHITECTURE, FLUX_VAE,
                             export_official_vae_state_dict, load_official_vae, official_layout)
from coda.vae import ContinuousVAE


def read_layout(compat_dir, name) -> dict[str, tuple[int, ...]]:
    lines = (compat_dir / name).read_text().splitlines()
    assert lines[0].split("\t") == ["key", "shape", "dtype"]
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    return {key: tuple(int(s) for s in shape.split("x")) for key, shape, _ in rows}


def zeros(layout):
    return {k: torch.zeros(()).expand(shape) for k, shape in layout.items()}


def assert_all_zero(module):
    assert all(not p.any() for p in module.parameters())


# ---- MAR kl16 (LDM layout) ----

def test_ldm_table_covers_mar_kl16_exactly(compat_dir):
    layout = read_layout(compat_dir, "mar_kl16_keys.tsv")
    config = ldm.diffusers_config(ldm.MAR_KL16)
    model_shapes = {k: tuple(v.shape) for k, v in AutoencoderKL(**config).state_dict().items()}
    rows = official_layout(ldm.MAR_KL16)
    assert [r.official for r in rows] == list(layout)  # same keys, same (LDM) order
    assert sorted(r.model for r in rows) == sorted(model_shapes)
    assert {r.official: r.official_shape for r in rows} == layout


def test_mar_kl16_loads_strictly(compat_dir):
    vae = load_official_vae(zeros(read_layout(compat_dir, "mar_kl16_keys.tsv")), ldm.MAR_KL16)
    assert_all_zero(vae)
    assert vae.scaling_factor == 0.2325 and vae.latent_channels == 16 and vae.downsample_factor == 16


def test_mar_kl16_errors_name_ldm_keys(compat_dir):
    state = zeros(read_layout(compat_dir, "mar_kl16_keys.tsv"))
    del state["decoder.up.1.upsample.conv.weight"]
    state["encoder.mid.attn_1.q.weight"] = torch.zeros(512, 512)
    state["encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ldm.LayoutError) as error:
        load_official_vae(state, ldm.MAR_KL16)
    message = str(error.value)
    assert "missing key: decoder.up.1.upsample.conv.weight" in message
    assert "wrong shape: encoder.mid.attn_1.q.weight: expected 512x512x1x1, got 512x512" in message
    assert "unexpected key: encoder.extra.weight" in message
    assert "up_blocks" not in message and "to_q" not in message


def test_unsupported_ldm_settings():
    with pytest.raises(ValueError, match="embed_dim"):
        ldm.diffusers_config({**ldm.MAR_KL16, "embed_dim": 8})
    with pytest.raises(ValueError, match="groupnorm_eps"):
        ldm.diffusers_config({**ldm.MAR_KL16, "groupnorm_eps": 1e-5})


# ---- FLUX VAE (diffusers layout) ----

def test_flux_vae_loads_strictly(compat_dir):
    layout = read_layout(compat_dir, "flux_vae_keys.tsv")
    vae = ContinuousVAE.from_config(FLUX_VAE)
    assert {k: tuple(v.shape) for k, v in vae.autoencoder.state_dict().items()} == layout
    vae.autoencoder.load_state_dict(zeros(layout), strict=True)
    assert_all_zero(vae)
    assert (vae.scaling_factor, vae.shift_factor, vae.downsample_factor) == (0.3611, 0.1159, 8)
    plain = load_official_vae(zeros(layout), {"architecture": DIFFUSERS_ARCHITECTURE, "diffusers_config": FLUX_VAE})
    assert_all_zero(plain)


# ---- released CODA checkpoints (LoRA) ----

CODA_LAYOUTS = [("coda_mar16_vae_ema_keys.tsv", CODA_MAR16_SETTINGS, 66),
                ("coda_flux8_vae_ema_keys.tsv", CODA_FLUX8_SETTINGS, 48)]


@pytest.mark.parametrize("name, settings, n_adapted", CODA_LAYOUTS)
def test_official_layout_matches_release(compat_dir, name, settings, n_adapted):
    layout = read_layout(compat_dir, name)
    rows = official_layout(settings)
    assert {r.official: r.official_shape for r in rows} == layout
    assert sum(r.official.endswith("lora_layer.down.weight") for r in rows) == n_adapted


@pytest.mark.parametrize("name, settings, n_adapted", CODA_LAYOUTS)
def test_official_vae_loads_and_exports(compat_dir, name, settings, n_adapted):
    layout = read_layout(compat_dir, name)
    vae = load_official_vae(zeros(layout), settings)
    assert_all_zero(vae)
    trainable = [n for n, p in vae.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * n_adapted and all(".lora_" in n for n in trainable)
    exported = export_official_vae_state_dict(vae, settings)
    assert {k: tuple(v.shape) for k, v in exported.items()} == layout


def test_official_errors_list_all_problems_in_official_names(compat_dir):
    state = zeros(read_layout(compat_dir, "coda_mar16_vae_ema_keys.tsv"))
    del state["decoder.up.4.upsample.conv.lora_layer.up.weight"]
    del state["encoder.conv_in.weight"]
    state["decoder.mid.block_1.conv1.lora_layer.down.weight"] = torch.zeros(16, 512, 3, 3)
    state["quantizer.codebooks.weight"] = torch.zeros(4, 16)
    with pytest.raises(ldm.LayoutError) as error:
        load_official_vae(state, CODA_MAR16_SETTINGS)
    message = str(error.value)
    for expected in ["missing key: decoder.up.4.upsample.conv.lora_layer.up.weight",
                     "missing key: encoder.conv_in.weight",
                     "wrong shape: decoder.mid.block_1.conv1.lora_layer.down.weight: expected 32x512x3x3, got 16x512x3x3",
                     "unexpected key: quantizer.codebooks.weight",
                     "2 missing, 1 unexpected, 1 wrong shape"]:
        assert expected in message
    assert "lora_A" not in message and "base_layer" not in message


def test_unknown_architecture_rejected():
    with pytest.raises(ValueError, match="architecture"):
        load_official_vae({}, {"architecture": "VQGAN"})


def test_ldm_table_with_decoder_attention():
    """LDM attention in the decoder up path maps onto AttnUpDecoderBlock2D (not used by MAR)."""
    settings = {**ldm.MAR_KL16, "ch": 32, "attn_resolutions_decoder": [16, 32]}
    config = ldm.diffusers_config(settings)
    assert config["up_block_types"] == ["AttnUpDecoderBlock2D"] * 2 + ["UpDecoderBlock2D"] * 3
    model_shapes = {k: tuple(v.shape) for k, v in AutoencoderKL(**config).state_dict().items()}
    rows = official_layout(settings)
    assert sorted(r.model for r in rows) == sorted(model_shapes)
    assert ("decoder.up.3.attn.2.proj_out.weight", "decoder.up_blocks.1.attentions.2.to_out.0.weight",
            "attn_proj", "weight") in [r[:4] for r in rows]

"""Discriminators: the PatchGAN design, the DINO discriminator on a local random ViT, and the
start-up error when DINO weights are missing."""
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import torch.nn.functional as F

from coda.discriminators import PatchGAN, build_discriminator, check_discriminator, synchronise_batchnorm
from coda.discriminators.dino import VIT_S16_CONFIG, DinoDiscriminator, discriminator_view, load_dino_backbone

TINY_VIT = dict(VIT_S16_CONFIG, hidden_size=16, num_attention_heads=2, intermediate_size=32, image_size=32)


def test_patchgan_follows_the_nlayer_design():
    torch.manual_seed(0)
    d = PatchGAN(channels=64, n_layers=3)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert all(c.kernel_size == (4, 4) for c in convs)
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert all(m.negative_slope == 0.2 for m in d.modules() if isinstance(m, nn.LeakyReLU))
    weights = torch.cat([c.weight.flatten() for c in convs])
    assert weights.mean().abs() < 1e-3 and abs(weights.std().item() - 0.02) < 1e-3
    gains = torch.cat([m.weight for m in d.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(gains.mean().item() - 1.0) < 5e-3 and abs(gains.std().item() - 0.02) < 5e-3
    assert d(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    assert build_discriminator("patchgan", channels=8, n_layers=2).config == {
        "kind": "patchgan", "in_channels": 3, "channels": 8, "n_layers": 2}


def _legacy_keys(state):
    """transformers 5 names -> the Hub's facebook/dino-vits16 names (older ViT layout)."""
    out = {}
    for key, value in state.items():
        key = (key.replace("layers.", "encoder.layer.").replace("attention.q_proj", "attention.attention.query")
               .replace("attention.k_proj", "attention.attention.key")
               .replace("attention.v_proj", "attention.attention.value")
               .replace("attention.o_proj", "attention.output.dense").replace("mlp.fc1", "intermediate.dense")
               .replace("mlp.fc2", "output.dense"))
        out[key] = value.contiguous()
    return out


def _random_vit(config):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    return ViTModel(ViTConfig(**config), add_pooling_layer=True).eval()


def _hidden(model, x):
    with torch.no_grad():
        return model(pixel_values=x, output_hidden_states=True).hidden_states


@pytest.fixture(scope="module")
def tiny_dino_dir(tmp_path_factory):
    """A random tiny ViT in the Hugging Face dino-vits16 directory layout (Hub key names)."""
    directory = tmp_path_factory.mktemp("dino")
    model = _random_vit(TINY_VIT)
    save_file(_legacy_keys(model.state_dict()), directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(TINY_VIT))
    return directory, model


def test_dino_backbone_loads_the_hub_layout_from_a_directory(tiny_dino_dir):
    directory, reference = tiny_dino_dir
    backbone = load_dino_backbone(directory)
    assert not any(p.requires_grad for p in backbone.parameters())
    x = torch.randn(1, 3, 32, 32)
    for a, b in zip(_hidden(backbone, x), _hidden(reference, x)):
        assert torch.equal(a, b)


def test_dino_backbone_loads_a_lone_vit_s16_weights_file(tmp_path):
    reference = _random_vit(VIT_S16_CONFIG)
    weights = tmp_path / "dino-vits16.safetensors"
    save_file(_legacy_keys(reference.state_dict()), weights)
    backbone = load_dino_backbone(weights)            # no config.json: the ViT-S/16 config is used
    assert backbone.config.hidden_size == 384 and backbone.config.num_hidden_layers == 12
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(_hidden(backbone, x)[-1], _hidden(reference, x)[-1])


def test_dino_backbone_rejects_a_file_with_missing_weights(tmp_path, tiny_dino_dir):
    directory, _ = tiny_dino_dir
    state = _legacy_keys(_random_vit(TINY_VIT).state_dict())
    del state["encoder.layer.3.output.dense.weight"]
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(TINY_VIT))
    with pytest.raises(ValueError, match="missing"):
        load_dino_backbone(tmp_path)


def test_dino_discriminator_heads_and_gradients(tiny_dino_dir):
    directory, _ = tiny_dino_dir
    torch.manual_seed(0)
    d = build_discriminator("dino", dino_weights=directory)
    assert isinstance(d, DinoDiscriminator) and d.config["kind"] == "dino" and d.config["weights"] == str(directory)
    convs = [m for m in d.heads.modules() if isinstance(m, nn.Conv1d)]
    assert all(hasattr(c, "parametrizations") for c in convs)           # spectral norm everywhere
    assert sorted({c.kernel_size[0] for c in convs}) == [1, 9]
    assert all(c.padding_mode == "circular" for c in convs if c.kernel_size[0] == 9)
    assert all(m.negative_slope == 0.2 for m in d.heads.modules() if isinstance(m, nn.LeakyReLU))
    d.train()
    assert not d.backbone.training                                        # frozen backbone stays in eval
    x = torch.rand(2, 3, 64, 64, requires_grad=True) * 2 - 1
    x.retain_grad()
    logits = d(x)
    assert logits.shape == (2, 5 * 4)                                     # 5 heads x (32 / 16)^2 tokens
    logits.mean().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.backbone.parameters())
    assert all(p.grad is not None for p in d.heads.parameters() if p.requires_grad)


def test_dino_without_weights_names_the_missing_file(tmp_path):
    missing = tmp_path / "dino-vits16"
    with pytest.raises(FileNotFoundError, match="dino-vits16") as error:
        check_discriminator("dino", missing)
    assert str(missing) in str(error.value) and "train.dino_weights" in str(error.value)
    with pytest.raises(FileNotFoundError, match="no train.dino_weights given"):
        build_discriminator("dino")


def test_training_with_dino_but_no_weights_stops_before_loading_anything(tmp_path):
    from coda.train.stage import train

    experiment = {"quantizer": {"kind": "coda"}, "lora": None,
                  "train": {"discriminator": "dino", "dino_weights": str(tmp_path / "nowhere")}}
    # neither the VAE nor the images exist: the DINO check must come first
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train(experiment, tmp_path / "no-vae", tmp_path / "out", images=tmp_path / "no-images.npy")
    assert not (tmp_path / "out").exists()


def test_dino_view_is_a_native_crop_or_an_area_resize_half_the_time():
    """The release's view of a larger image: a random crop at native resolution with probability
    0.5, otherwise an ``area`` resize; one draw per call, reproducible from its generator."""
    x = torch.randn(2, 3, 40, 40)
    area = F.interpolate(x, size=(32, 32), mode="area")
    generator = torch.Generator().manual_seed(0)
    crops, offsets = 0, set()
    for _ in range(200):
        view = discriminator_view(x, 32, "crop_or_area", generator)
        assert view.shape == (2, 3, 32, 32)
        if torch.equal(view, area):
            continue
        found = [(t, l) for t in range(9) for l in range(9) if torch.equal(view, x[..., t:t + 32, l:l + 32])]
        assert len(found) == 1
        crops += 1
        offsets.add(found[0])
    assert 70 < crops < 130 and len(offsets) > 20
    again = torch.Generator().manual_seed(0)
    first = discriminator_view(x, 32, "crop_or_area", torch.Generator().manual_seed(0))
    assert torch.equal(discriminator_view(x, 32, "crop_or_area", again), first)
    assert torch.equal(discriminator_view(x[..., :32, :32], 32, "crop_or_area", generator), x[..., :32, :32])
    assert torch.equal(discriminator_view(x, 32, "bilinear"),
                       F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False))


def test_dino_heads_release_init_and_batchnorm(tiny_dino_dir):
    """release: head convs trunc-normal(0.02) (before spectral norm), zero bias, BatchNorm eps 1e-6,
    SyncBatchNorm under data parallelism on GPUs; torch: PyTorch's defaults."""
    directory, _ = tiny_dino_dir
    torch.manual_seed(0)
    release = build_discriminator("dino", dino_weights=directory)
    assert release.config["view"] == "crop_or_area" and release.config["heads"] == "release"
    convs = [m for m in release.heads.modules() if isinstance(m, nn.Conv1d)]
    weights = torch.cat([c.parametrizations.weight.original.flatten() for c in convs])
    assert abs(weights.std().item() - 0.02) < 1e-3 and weights.mean().abs() < 1e-3   # truncation at +-2: far out
    assert all(torch.equal(c.bias, torch.zeros_like(c.bias)) for c in convs)
    norms = [m for m in release.heads.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(norms) == 10 and all(m.eps == 1e-6 for m in norms)

    torch.manual_seed(0)
    plain = build_discriminator("dino", dino_weights=directory, dino_view="bilinear", dino_heads="torch")
    assert all(m.eps == 1e-5 for m in plain.heads.modules() if isinstance(m, nn.BatchNorm1d))
    plain_convs = [c for c in plain.heads.modules() if isinstance(c, nn.Conv1d)]
    assert all(c.bias.abs().sum() > 0 for c in plain_convs)
    assert torch.cat([c.parametrizations.weight.original.flatten() for c in plain_convs]).std() > 0.04

    assert synchronise_batchnorm(release, 1, torch.device("cuda")) is release     # one process: nothing to sync
    assert synchronise_batchnorm(plain, 2, torch.device("cuda")).config.get("batchnorm") is None
    synced = synchronise_batchnorm(release, 2, torch.device("cuda"))
    norms = [m for m in synced.heads.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(isinstance(m, nn.SyncBatchNorm) and m.eps == 1e-6 for m in norms)
    assert synced.config["batchnorm"] == "synchronised"

"""LoRA through peft on a small random-init VAE."""

import pytest
import torch
import torch.nn.functional as F

from coda.lora import LORA_TARGETS, add_lora, lora_module_names, lora_target_names
from coda.losses import adaptive_weight_layer
from coda.vae import ContinuousVAE

# small VAE: 4 levels, 1 resnet per encoder level, 2 per decoder level, 2 per mid block
N_ENCODER_F16 = 4 * 2 + 3 + 4  # conv1/conv2, downsample convs, mid-block convs
N_DECODER_F16 = 4 * 2 * 2 + 3 + 4


def make_vae(**lora):
    vae = ContinuousVAE.small(seed=0)
    names = add_lora(vae, **lora) if lora else []
    return vae, names


def lora_params(vae):
    return [p for name, p in vae.named_parameters() if ".lora_A." in name or ".lora_B." in name]


@pytest.fixture
def images():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_targets_are_exactly_the_matching_convs():
    vae, names = make_vae(rank=4, targets=LORA_TARGETS["f16"])
    assert len(names) == N_ENCODER_F16 + N_DECODER_F16
    assert set(names) == set(lora_module_names(vae))
    for name in names:
        assert any(t in name for t in LORA_TARGETS["f16"]) and name.startswith(("encoder.", "decoder."))
    excluded = ("conv_in", "conv_out", "conv_shortcut", "quant_conv", "attentions", "to_q")
    assert not [n for n in names if any(e in n for e in excluded)]
    assert "decoder.up_blocks.0.upsamplers.0.conv" in names and "encoder.down_blocks.0.downsamplers.0.conv" in names


def test_f8_targets_resnet_convs_only():
    _, names = make_vae(rank=4, targets=LORA_TARGETS["f8"])
    assert names and all(n.endswith(("conv1", "conv2")) for n in names)
    assert len(names) == N_ENCODER_F16 - 3 + N_DECODER_F16 - 3


def test_only_lora_parameters_trainable():
    vae, names = make_vae(rank=4)
    trainable = [n for n, p in vae.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(lora_params(vae)) == len(trainable) == 2 * len(names)


def test_fresh_lora_reproduces_frozen_vae_exactly(images):
    frozen, _ = make_vae()
    adapted, _ = make_vae(rank=8)
    with torch.no_grad():
        z = frozen.latent(images, mode="mean")
        assert torch.equal(adapted.latent(images, mode="mean"), z)
        assert torch.equal(adapted.decode(z), frozen.decode(z))


def test_init_statistics():
    rank = 32
    vae, names = make_vae(rank=rank)
    downs = torch.cat([vae.autoencoder.get_submodule(n).lora_A["default"].weight.flatten() for n in names])
    assert abs(downs.std().item() - 1 / rank) < 0.05 / rank and abs(downs.mean().item()) < 0.05 / rank
    for name in names:
        conv = vae.autoencoder.get_submodule(name)
        down, up, base = conv.lora_A["default"], conv.lora_B["default"], conv.base_layer
        assert (down.kernel_size, down.stride, down.padding) == (base.kernel_size, base.stride, base.padding)
        assert down.bias is None and up.bias is None and up.kernel_size == (1, 1)
        assert not up.weight.any() and conv.scaling["default"] == 1.0


def test_scale_one_matches_hand_computed_branch():
    vae, _ = make_vae(rank=4)
    conv = vae.autoencoder.encoder.down_blocks[0].downsamplers[0].conv  # stride 2, padding 0
    torch.nn.init.normal_(conv.lora_B["default"].weight)
    x = torch.randn(1, 32, 9, 9)
    base, down, up = conv.base_layer, conv.lora_A["default"].weight, conv.lora_B["default"].weight
    expected = (F.conv2d(x, base.weight, base.bias, base.stride, base.padding)
                + F.conv2d(F.conv2d(x, down, None, base.stride, base.padding), up))
    with torch.no_grad():
        torch.testing.assert_close(conv(x), expected)


def test_decoder_only_leaves_encoder_untouched(images):
    vae, names = make_vae(rank=4, where="decoder")
    assert len(names) == N_DECODER_F16 and all(n.startswith("decoder.") for n in names)
    assert not any("lora" in n or "base_layer" in n for n, _ in vae.autoencoder.encoder.named_modules())
    assert not any(p.requires_grad for p in vae.autoencoder.encoder.parameters())


def test_gradients_reach_only_lora(images):
    vae, _ = make_vae(rank=4)
    vae.decode(vae.latent(images, mode="mean")).square().mean().backward()
    assert all(p.grad is not None for p in lora_params(vae))
    assert all(p.grad is None for n, p in vae.named_parameters() if not p.requires_grad)


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": 0}, "rank"), ({"rank": -2}, "rank"), ({"rank": 2.5}, "rank"), ({"rank": True}, "rank"),
    ({"where": "encoder"}, "where"), ({"targets": ()}, "targets"), ({"targets": ("nothing",)}, "matches"),
])
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        add_lora(ContinuousVAE.small(), **kwargs)


def test_lora_is_attached_once():
    vae, _ = make_vae(rank=4)
    with pytest.raises(ValueError, match="already"):
        add_lora(vae, rank=4)
    assert lora_target_names(vae) == []  # wrapped internals are never targets


def test_adaptive_weight_layer(images):
    vae, _ = make_vae(rank=4)
    decoder = vae.autoencoder.decoder
    f16, f8 = adaptive_weight_layer(vae, "f16"), adaptive_weight_layer(vae, "f8")
    assert f16 is decoder.up_blocks[0].upsamplers[0].conv.lora_B["default"].weight
    assert f8 is decoder.up_blocks[-1].resnets[-1].conv2.lora_B["default"].weight
    loss = vae.decode(vae.latent(images, mode="mean")).abs().mean()
    grad_f16, grad_f8 = torch.autograd.grad(loss, [f16, f8])
    assert grad_f16.abs().sum() > 0 and grad_f8.abs().sum() > 0
    with pytest.raises(ValueError, match="variant"):
        adaptive_weight_layer(vae, "f32")
    with pytest.raises(ValueError, match="add_lora"):
        adaptive_weight_layer(ContinuousVAE.small(), "f16")

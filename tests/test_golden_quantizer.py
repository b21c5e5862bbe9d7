"""The reference's outputs on random weights (tests/data/compat/golden_quantizer_mar16.*) are reproduced:
indices exactly, f_hat and losses to 1e-5 relative, every gradient to 1e-4 relative."""

import json

import pytest
import torch
from safetensors.torch import load_file

from coda.compat.quantizer import CODA_F16_QUANTIZER_SETTINGS, load_official_quantizer
from coda.quantizers import CodaQuantizer


@pytest.fixture(scope="module")
def golden(compat_dir):
    stem = compat_dir / "golden_quantizer_mar16"
    settings = json.loads(stem.with_suffix(".json").read_text())
    return load_file(str(stem.with_suffix(".safetensors"))), settings


@pytest.fixture(scope="module")
def run(golden):
    """Forward and backward of the golden loss with the golden weights."""
    tensors, settings = golden
    params = {key.removeprefix("param."): t for key, t in tensors.items() if key.startswith("param.")}
    quantizer = load_official_quantizer(params, settings)
    z = tensors["input"].clone().requires_grad_(True)
    out = quantizer(z)
    loss = ((out.f_hat - tensors["target"]) ** 2).mean() + out.vq_loss + 0.05 * out.entropy_loss
    loss.backward()
    grads = {"input": z.grad, **{name: p.grad for name, p in quantizer.named_parameters()}}
    return quantizer, out, loss, grads


def _close(actual, expected, rtol):
    # atol tiny relative to the tensor's scale: elements near zero only carry float noise
    atol = rtol * 0.1 * expected.abs().max().item()
    torch.testing.assert_close(actual.reshape(expected.shape), expected, rtol=rtol, atol=atol)


def test_golden_settings_are_the_released_f16_settings(golden):
    _, settings = golden
    assert settings["loss"] == "mean((f_hat - target)^2) + vq_loss + 0.05 * entropy_loss"
    assert settings["dtype"] == "float32"
    assert {k: settings[k] for k in CODA_F16_QUANTIZER_SETTINGS} == CODA_F16_QUANTIZER_SETTINGS
    defaults = CodaQuantizer().config
    assert (defaults["codebook_size"], defaults["dim"], defaults["scales"]) == (
        settings["codebook_size"], settings["code_dim"], settings["scales"])


def test_indices_exact(golden, run):
    tensors, settings = golden
    _, out, _, _ = run
    assert len(out.indices) == len(settings["scales"])
    for i, idx in enumerate(out.indices):
        assert torch.equal(idx, tensors[f"indices.{i}"]), f"indices of scale {settings['scales'][i]} differ"


def test_f_hat_and_losses(golden, run):
    tensors, _ = golden
    _, out, loss, _ = run
    _close(out.f_hat.detach(), tensors["f_hat"], rtol=1e-5)
    _close(out.vq_loss.detach(), tensors["vq_loss"], rtol=1e-5)
    _close(out.entropy_loss.detach(), tensors["entropy_loss"], rtol=1e-5)
    _close(loss.detach(), tensors["loss"], rtol=1e-5)


def test_every_gradient(golden, run):
    tensors, _ = golden
    _, _, _, grads = run
    expected_names = {key.removeprefix("grad.") for key in tensors if key.startswith("grad.")}
    assert expected_names == set(grads)
    for name, grad in grads.items():
        assert grad is not None, name
        _close(grad, tensors[f"grad.{name}"], rtol=1e-4)


def test_decode_matches_forward(run):
    quantizer, out, _, _ = run
    with torch.no_grad():
        assert torch.equal(quantizer.indices_to_latent(out.indices), out.f_hat)

"""ContinuousVAE on small random-init models (CPU, 32x32 or 64x64 inputs)."""

import time

import pytest
import torch

from coda.vae import ContinuousVAE, Posterior


@pytest.fixture(scope="module")
def vae():
    return ContinuousVAE.small(seed=0, scaling_factor=0.5, shift_factor=0.1).eval()


@pytest.fixture
def images():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_null_shift_factor_means_no_shift():
    vae = ContinuousVAE.small()  # SMALL_VAE: shift_factor None
    assert vae.shift_factor == 0.0 and vae.downsample_factor == 8


def test_shapes(vae, images):
    with torch.no_grad():
        z = vae.latent(images, mode="mean")
        assert z.shape == (2, 16, 4, 4)
        assert vae.decode(z).shape == images.shape


def test_normalisation_round_trip(vae):
    raw = torch.randn(2, 16, 4, 4)
    assert torch.allclose(vae.normalize(raw), (raw - 0.1) * 0.5)
    torch.testing.assert_close(vae.denormalize(vae.normalize(raw)), raw)


def test_encode_matches_diffusers(vae, images):
    with torch.no_grad():
        ours = vae.encode(images)
        theirs = vae.autoencoder.encode(images).latent_dist
    torch.testing.assert_close(ours.mean, theirs.mean)
    torch.testing.assert_close(ours.logvar, theirs.logvar)


def test_decode_undoes_normalisation_then_post_quant_conv(vae):
    z = torch.randn(1, 16, 4, 4)
    ae = vae.autoencoder
    with torch.no_grad():
        expected = ae.decoder(ae.post_quant_conv(z / 0.5 + 0.1))
        torch.testing.assert_close(vae.decode(z), expected)


def test_latent_modes(vae, images):
    with torch.no_grad():
        post = vae.encode(images)
        torch.testing.assert_close(vae.latent(images, mode="mean"), vae.normalize(post.mean))
        a = vae.latent(images, generator=torch.Generator().manual_seed(3))
        b = vae.latent(images, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.allclose(a, vae.normalize(post.mean))
    with pytest.raises(ValueError, match="mode"):
        vae.latent(images, mode="median")


def test_posterior_clamps_logvar():
    post = Posterior(torch.zeros(1, 2, 1, 1), torch.tensor([100.0, -100.0]).view(1, 2, 1, 1))
    assert post.logvar.flatten().tolist() == [20.0, -30.0]
    torch.testing.assert_close(post.std, torch.exp(0.5 * post.logvar))


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 1, 32, 32), (1, 4, 32, 32)])
def test_bad_images_rejected(vae, shape):
    with pytest.raises(ValueError, match="images must have shape"):
        vae.encode(torch.zeros(shape))


def test_bad_latent_rejected(vae):
    with pytest.raises(ValueError, match="latent must have shape"):
        vae.decode(torch.zeros(1, 4, 4, 4))


def test_config_round_trip(vae):
    again = ContinuousVAE.from_config(vae.config)
    assert again.config == vae.config
    again.load_state_dict(vae.state_dict())
    with pytest.raises(ValueError, match="AutoencoderKL config"):
        ContinuousVAE.from_config({**vae.config, "no_such_option": 1})


def test_from_pretrained_local_dir(vae, tmp_path, images):
    vae.autoencoder.save_pretrained(tmp_path / "model" / "vae")
    loaded = ContinuousVAE.from_pretrained(tmp_path / "model", subfolder="vae").eval()
    assert (loaded.scaling_factor, loaded.shift_factor) == (0.5, 0.1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.latent(images, mode="mean"), vae.latent(images, mode="mean"))


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        ContinuousVAE.from_pretrained(tmp_path / "no_such_dir")
    with pytest.raises(FileNotFoundError, match="config.json"):
        ContinuousVAE.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(ValueError, match="not a diffusers AutoencoderKL"):
        ContinuousVAE.from_pretrained(tmp_path)


def test_from_pretrained_offline_hub_id_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        ContinuousVAE.from_pretrained("no-such-org/no-such-vae")
    assert time.monotonic() - start < 10


def test_freeze():
    frozen = ContinuousVAE.small().freeze()
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())

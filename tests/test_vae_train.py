"""The demo's small-VAE trainer (the `vae` stage at demo and tiny scale)."""
import numpy as np
import pytest
import torch

from coda.artifacts import VAE_INFO
from coda.data.datasets import ArrayImages
from coda.vae_train import kl_divergence, train_small_vae


def test_kl_divergence_matches_hand_computation():
    mean = torch.tensor([[0.5, -1.0]])
    logvar = torch.tensor([[0.0, np.log(4.0)]], dtype=torch.float32)
    # 0.5 * sum(mu^2 + var - 1 - log var) = 0.5 * ((0.25 + 1 - 1 - 0) + (1 + 4 - 1 - log 4))
    expected = 0.5 * (0.25 + 4 - np.log(4.0))
    assert torch.isclose(kl_divergence(mean, logvar), torch.tensor(expected, dtype=torch.float32))


def test_small_vae_training_writes_a_loadable_vae_with_unit_latent_scale(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "train.npy", rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8))
    vae, settings = train_small_vae(ArrayImages(tmp_path / "train.npy"), tmp_path / "out", steps=3, batch_size=4,
                                    architecture={"block_out_channels": [8, 8], "norm_num_groups": 8,
                                                  "latent_channels": 4})
    assert vae.scaling_factor == settings["scaling_factor"] > 0 and settings["steps"] == 3
    assert not (tmp_path / "out" / VAE_INFO).exists()  # the vae stage writes it, with the VAE's source and hash
    rows = (tmp_path / "out/train_log.tsv").read_text().splitlines()
    assert rows[0].startswith("step\tlr\tloss") and len(rows) == 4
    z = vae.normalize(vae.encode(ArrayImages(tmp_path / "train.npy")[0][None]).mean)
    assert z.shape == (1, 4, 8, 8)
    # the scale makes normalised posterior samples of the training images unit-variance
    images = torch.stack([ArrayImages(tmp_path / "train.npy")[i] for i in range(16)])
    with torch.no_grad():
        samples = vae.normalize(vae.encode(images).sample(torch.Generator().manual_seed(1)))
    assert samples.std().item() == pytest.approx(1.0, abs=0.05)


TINY_RECIPE = {"prepare": {"crops_per_train_photo": 2, "seed": 0},
               "architecture": {"block_out_channels": [8, 8], "norm_num_groups": 4, "latent_channels": 4},
               "train": {"steps": 2, "batch_size": 2, "lr": 1e-3, "flip": True,
                         "colour_jitter": {"gain": 0.25, "offset": 0.1}, "seed": 0}, "threads": 1}


def test_pretrain_vae_rebuilds_bit_for_bit_and_its_check_refuses_another_recipe_or_edited_weights(tmp_path):
    from coda.config import ParamsError
    from coda.data.photos import VAL_PHOTOS
    from coda.vae import ContinuousVAE
    from coda.vae_train import WEIGHTS, check_pretrained, pretrain_vae

    first = pretrain_vae(TINY_RECIPE, 16, tmp_path / "a", command="test")
    second = pretrain_vae(TINY_RECIPE, 16, tmp_path / "b", command="test")
    assert first["weights_sha256"] == second["weights_sha256"]
    assert first["train_data"]["sha256"] == second["train_data"]["sha256"]
    assert not set(first["train_data"]["photos"]) & set(VAL_PHOTOS)
    assert first["train_data"]["held_out_photos"] == list(VAL_PHOTOS)
    assert ContinuousVAE.from_pretrained(tmp_path / "a").scaling_factor == first["scaling_factor"]
    assert check_pretrained(tmp_path / "a", TINY_RECIPE, 16, "scales.x.vae") == first
    other = {**TINY_RECIPE, "train": {**TINY_RECIPE["train"], "steps": 3}}
    with pytest.raises(ParamsError, match="another recipe"):
        check_pretrained(tmp_path / "a", other, 16, "scales.x.vae")
    with pytest.raises(ParamsError, match="another recipe"):
        check_pretrained(tmp_path / "a", TINY_RECIPE, 32, "scales.x.vae")
    weights = tmp_path / "a" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(FileNotFoundError, match="make demo-vae"):
        check_pretrained(tmp_path / "a", TINY_RECIPE, 16, "scales.x.vae")


def test_the_shipped_demo_vae_is_what_its_recipe_and_provenance_say():
    """models/demo-vae: built by coda pretrain-vae from params.yaml's recipe, at a recorded commit,
    never from a validation photo."""
    from coda.config import load_params
    from coda.data.photos import VAL_PHOTOS
    from coda.vae_train import check_pretrained

    demo = load_params("params.yaml", scale="demo")["scales"]["demo"]
    provenance = check_pretrained(demo["vae"]["path"], demo["vae"]["recipe"], demo["prepare"]["resolution"],
                                  "scales.demo.vae")
    assert provenance["command"] == "coda pretrain-vae --scale demo"
    assert provenance["commit"] and provenance["uncommitted_changes"] is False
    assert provenance["threads"] == demo["vae"]["recipe"]["threads"]
    assert not set(provenance["train_data"]["photos"]) & set(VAL_PHOTOS)


def test_pretrain_vae_command_refuses_a_scale_without_a_recipe(capsys):
    from coda.cli import main

    assert main(["pretrain-vae", "--scale", "tiny"]) == 2
    assert "has no recipe" in capsys.readouterr().err


def test_colour_jitter_is_a_clipped_per_image_channel_affine_map_and_off_at_zero():
    from coda.vae_train import jitter_colours

    images = torch.rand(4, 3, 8, 8) * 2 - 1
    same = jitter_colours(images, gain=0.0, offset=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(same, images, atol=1e-6)
    out = jitter_colours(images, gain=0.25, offset=0.1, generator=torch.Generator().manual_seed(0))
    assert out.min() >= -1 and out.max() <= 1 and not torch.allclose(out, images)
    x, y = (images + 1) / 2, (out + 1) / 2  # per image and channel y = clip(a x + b) with |a - 1| <= .25, |b| <= .1
    inside = (y > 0) & (y < 1)
    for i in range(4):
        for c in range(3):
            m = inside[i, c]
            a, b = torch.linalg.lstsq(torch.stack([x[i, c][m], torch.ones(int(m.sum()))], 1), y[i, c][m][:, None]).solution[:, 0]
            assert abs(a - 1) <= 0.25 + 1e-4 and abs(b) <= 0.1 + 1e-4
            assert torch.allclose(a * x[i, c][m] + b, y[i, c][m], atol=1e-5)

"""The demo's small-VAE trainer (the `vae` stage at demo and tiny scale)."""
import json

import numpy as np
import pytest
import torch

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
    vae = train_small_vae(ArrayImages(tmp_path / "train.npy"), tmp_path / "out", steps=3, batch_size=4,
                          architecture={"block_out_channels": [8, 8], "norm_num_groups": 8, "latent_channels": 4})
    info = json.loads((tmp_path / "out/vae_info.json").read_text())
    assert vae.scaling_factor == info["scaling_factor"] > 0
    rows = (tmp_path / "out/train_log.tsv").read_text().splitlines()
    assert rows[0].startswith("step\tlr\tloss") and len(rows) == 4
    z = vae.normalize(vae.encode(ArrayImages(tmp_path / "train.npy")[0][None]).mean)
    assert z.shape == (1, 4, 8, 8)
    # the scale makes normalised posterior samples of the training images unit-variance
    images = torch.stack([ArrayImages(tmp_path / "train.npy")[i] for i in range(16)])
    with torch.no_grad():
        samples = vae.normalize(vae.encode(images).sample(torch.Generator().manual_seed(1)))
    assert samples.std().item() == pytest.approx(1.0, abs=0.05)

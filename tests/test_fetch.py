"""The fetch stage (coda/fetch.py) against fake local sources, never the network: a pre-populated
Hugging Face cache, a stand-in for huggingface_hub's download function that serves files from a
local folder into that cache, and file:// URLs for torch.hub's real download function."""
import hashlib
import json
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants

from coda import external_inputs
from coda.cli import main
from coda.config import load_params
from coda.compat.release import RELEASED_FILES, RELEASED_REPO
from coda.fetch import ChecksumError, fetch
from coda.external_inputs import DINO_VITS16, MAR_KL16, MissingInputsError, UrlFile

sys.path.insert(0, str(Path(__file__).parent))
from helpers import ROOT  # noqa: E402
from test_hub import add_to_cache  # noqa: E402

INCEPTION_NAME = external_inputs.INCEPTION.url.rsplit("/", 1)[1]


def test_the_inception_url_is_torch_fidelitys():
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    pinned = external_inputs.INCEPTION
    assert pinned.url == URL_INCEPTION_V3 and pinned.sha256.startswith(INCEPTION_NAME[-12:-4])


def test_demo_and_tiny_fetch_nothing(tmp_path):
    for scale in ("demo", "tiny"):
        record = fetch(load_params(ROOT / "params.yaml", scale=scale), tmp_path / scale / "fetched.json")
        assert record == {"scale": scale, "inputs": []}
        assert json.loads((tmp_path / scale / "fetched.json").read_text()) == record


@pytest.fixture
def paper(tmp_path, monkeypatch):
    """The paper scale in an empty folder with ImageNet present; empty HF and torch hub caches; offline.
    The Inception weights come from a file:// URL (a small file standing in for them, with its pin)."""
    run = tmp_path / "run"
    (run / "data/imagenet/train").mkdir(parents=True)
    (run / "data/imagenet/val").mkdir(parents=True)
    monkeypatch.chdir(run)
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    go_offline(monkeypatch, True)
    source = tmp_path / "source" / INCEPTION_NAME
    source.parent.mkdir()
    source.write_bytes(b"inception weights standing in for torch-fidelity's")
    monkeypatch.setattr(external_inputs, "INCEPTION",
                        UrlFile(source.as_uri(), hashlib.sha256(source.read_bytes()).hexdigest(), source.stat().st_size))
    params = load_params(ROOT / "params.yaml", scale="imagenet")
    params["scales"]["imagenet"]["extra_vaes"] = {}  # the f16 row's weights; the FLUX VAE is one more hub VAE
    return {"params": params, "cache": cache, "tmp": tmp_path, "run": run,
            "inception": tmp_path / "torch/hub/checkpoints" / INCEPTION_NAME}


def go_offline(monkeypatch, offline: bool):
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


def publish(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def tiny_dino_files(folder: Path) -> Path:
    """A narrow random ViT in the layout of facebook/dino-vits16 (config.json + pytorch_model.bin)."""
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64,
                       image_size=224, patch_size=16)
    torch.manual_seed(0)
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    torch.save(ViTModel(config, add_pooling_layer=False).state_dict(), folder / "pytorch_model.bin")
    return folder


def no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was tried: {args}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_offline_a_missing_weight_is_refused_up_front_and_nothing_downloads(paper, monkeypatch):
    no_downloads(monkeypatch)
    params = paper["params"]
    for check in (lambda: external_inputs.check_external_inputs(params),
                  lambda: fetch(params, "work/imagenet/fetched.json")):
        with pytest.raises(MissingInputsError) as error:
            check()
        message = str(error.value)
        assert message.startswith("3 external input(s) of scale 'imagenet' are missing")
        for missing in ("weights/kl16.safetensors", "weights/dino-vits16", INCEPTION_NAME, "jadechoghari/mar",
                        "facebook/dino-vits16"):
            assert missing in message
        assert message.count("run `coda fetch --scale imagenet` with network") == 3
    assert not Path("work").exists() and not Path("weights").exists()


def test_online_the_check_lets_the_weights_fetch_will_get_be_missing(paper, monkeypatch):
    go_offline(monkeypatch, False)
    external_inputs.check_external_inputs(paper["params"])  # the fetch stage, first, will get them
    with pytest.raises(MissingInputsError, match="run `coda fetch --scale imagenet` \\(the pipeline's first stage\\)"):
        external_inputs.check_external_inputs(paper["params"], present=True)  # what fetch checks at its end
    Path("data/imagenet/val").rmdir()
    with pytest.raises(MissingInputsError, match="(?s)1 external input.*data/imagenet/val"):
        external_inputs.check_external_inputs(paper["params"])  # ImageNet is never fetched


def populate_cache(paper) -> dict:
    hub = paper["tmp"] / "hub"
    mar = publish(hub / "mar", {"kl16.safetensors": b"kl16 weights"})
    dino = tiny_dino_files(hub / "dino")
    add_to_cache(paper["cache"], MAR_KL16.repo_id, mar, "main")
    commit = add_to_cache(paper["cache"], DINO_VITS16.repo_id, dino, "main")
    paper["inception"].parent.mkdir(parents=True)
    paper["inception"].write_bytes(Path(external_inputs.INCEPTION.url[len("file://"):]).read_bytes())
    return {"mar": mar, "dino": dino, "dino_commit": commit}


def test_offline_fetch_checks_the_cached_weights_links_them_and_records_them(paper, monkeypatch):
    hub = populate_cache(paper)
    no_downloads(monkeypatch)
    Path("weights/dino-vits16").mkdir(parents=True)  # an empty folder is filled, not taken for your own files
    record = fetch(paper["params"], "work/imagenet/fetched.json")
    assert json.loads(Path("work/imagenet/fetched.json").read_text()) == record
    by_where = {entry["where"]: entry for entry in record["inputs"]}
    assert set(by_where) == {"weights/kl16.safetensors", "weights/dino-vits16/config.json",
                             "weights/dino-vits16/pytorch_model.bin", f"torch hub cache: checkpoints/{INCEPTION_NAME}"}
    for where, entry in by_where.items():
        path = paper["inception"] if where.startswith("torch") else Path(where)
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["bytes"] == path.stat().st_size
    assert by_where["weights/kl16.safetensors"]["check"] == "sha256 published by the hub"
    assert by_where["weights/dino-vits16/config.json"]["check"] == "git hash published by the hub"
    assert by_where["weights/dino-vits16/pytorch_model.bin"]["from"] == \
        f"hf://facebook/dino-vits16@{hub['dino_commit']}/pytorch_model.bin"
    assert by_where[f"torch hub cache: checkpoints/{INCEPTION_NAME}"]["check"] == \
        "sha256 pinned in coda/external_inputs.py"
    # weights/ links into the cache, and what the pipeline reads there is what the hub published
    assert Path("weights/kl16.safetensors").is_symlink()
    assert Path("weights/kl16.safetensors").read_bytes() == (hub["mar"] / "kl16.safetensors").read_bytes()
    from coda.discriminators.dino import load_dino_backbone

    assert load_dino_backbone("weights/dino-vits16").config.hidden_size == 32
    external_inputs.check_external_inputs(paper["params"], present=True)  # every later stage finds its inputs
    assert fetch(paper["params"], "work/imagenet/fetched.json") == record  # the same record again: nothing reruns


def test_online_fetch_downloads_each_missing_file_once(paper, monkeypatch):
    go_offline(monkeypatch, False)
    hub = paper["tmp"] / "hub"
    published = {MAR_KL16.repo_id: publish(hub / "mar", {"kl16.safetensors": b"kl16 weights"}),
                 DINO_VITS16.repo_id: tiny_dino_files(hub / "dino"),
                 RELEASED_REPO: publish(hub / "coda", {name: name.encode() for name in RELEASED_FILES["f16"]})}
    calls = []

    def hf_hub_download(repo_id, filename, revision="main", **kwargs):
        """huggingface_hub's download, served from a local folder standing in for the hub."""
        calls.append((repo_id, filename))
        single = paper["tmp"] / "download" / str(len(calls))
        publish(single, {filename: (published[repo_id] / filename).read_bytes()})
        commit = add_to_cache(paper["cache"], repo_id, single, revision, commit=f"{len(repo_id):040d}")
        return str(paper["cache"] / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    params = paper["params"]
    params["pipeline"]["experiments"].append("released")
    record = fetch(params, "work/imagenet/fetched.json")
    assert sorted(calls) == sorted([(MAR_KL16.repo_id, "kl16.safetensors"), (DINO_VITS16.repo_id, "config.json"),
                                    (DINO_VITS16.repo_id, "pytorch_model.bin"),
                                    *((RELEASED_REPO, name) for name in RELEASED_FILES["f16"])])
    # the Inception file came through torch.hub's own download function, from its file:// URL
    assert paper["inception"].read_bytes() == Path(external_inputs.INCEPTION.url[len("file://"):]).read_bytes()
    assert not list(paper["inception"].parent.glob("*.partial"))
    released = [e for e in record["inputs"] if e["where"].startswith(f"HF cache: {RELEASED_REPO}/")]
    assert [e["check"] for e in released] == ["sha256 published by the hub"] * 2
    assert Path("weights/kl16.safetensors").read_bytes() == b"kl16 weights"
    # a second run downloads nothing, and records the same
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded again"))
    assert fetch(params, "work/imagenet/fetched.json") == record and len(calls) == 5


def test_a_checksum_mismatch_is_one_line_and_the_file_is_not_used(paper, monkeypatch, capsys):
    populate_cache(paper)
    blob = Path(MAR_KL16.cached_paths()[0]).resolve()
    blob.write_bytes(b"kl16 weights, corrupted")
    with pytest.raises(ChecksumError) as error:
        fetch(paper["params"], "work/imagenet/fetched.json")
    assert "\n" not in str(error.value) and str(blob) in str(error.value) and "coda fetch" in str(error.value)
    assert not Path("weights/kl16.safetensors").exists() and not Path("work/imagenet/fetched.json").exists()

    # the same through the command: one line, exit status 2
    flux = "path: black-forest-labs/FLUX.1-dev, subfolder: vae"  # a local FLUX VAE: only kl16 is fetched here
    assert flux in (ROOT / "params.yaml").read_text()
    Path("params.yaml").write_text((ROOT / "params.yaml").read_text().replace(flux, "path: flux-vae"))
    Path("flux-vae").mkdir()
    (Path("workflow/schemas")).mkdir(parents=True)
    (Path("workflow/schemas/params.schema.yaml")).write_text((ROOT / "workflow/schemas/params.schema.yaml").read_text())
    assert main(["fetch", "--scale", "imagenet", "--out", "work/imagenet/fetched.json"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("coda fetch: error: ") and str(blob) in lines[0]

    # a corrupt Inception file under torch hub's release name is refused too
    blob.write_bytes(b"kl16 weights")
    paper["inception"].write_bytes(b"truncated")
    with pytest.raises(ChecksumError, match=f"{paper['inception']} does not match the sha256 pinned"):
        fetch(paper["params"], "work/imagenet/fetched.json")


def test_a_bad_download_never_reaches_its_place(paper, monkeypatch):
    go_offline(monkeypatch, False)
    populate_cache(paper)
    paper["inception"].unlink()
    pinned = external_inputs.INCEPTION
    monkeypatch.setattr(external_inputs, "INCEPTION", UrlFile(pinned.url, "0" * 64, pinned.size))
    with pytest.raises(ChecksumError) as error:
        fetch(paper["params"], "work/imagenet/fetched.json")
    assert "\n" not in str(error.value) and "not written" in str(error.value)
    assert not paper["inception"].exists() and not list(paper["inception"].parent.glob("*.partial"))
    assert not Path("work/imagenet/fetched.json").exists()


def test_no_network_and_gated_repositories_say_what_to_do(paper, monkeypatch):
    from httpx2 import Request, Response
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

    go_offline(monkeypatch, False)
    paper["inception"].parent.mkdir(parents=True)
    paper["inception"].write_bytes(Path(external_inputs.INCEPTION.url[len("file://"):]).read_bytes())
    paper["params"]["scales"]["imagenet"]["vae"] = {"source": "pretrained", "path": "black-forest-labs/FLUX.1-dev"}

    def hf_hub_download(repo_id, filename, **kwargs):
        if repo_id == "black-forest-labs/FLUX.1-dev":
            response = Response(401, request=Request("GET", f"https://huggingface.co/{repo_id}/{filename}"))
            raise GatedRepoError("Access to model black-forest-labs/FLUX.1-dev is restricted.", response=response)
        raise LocalEntryNotFoundError("cannot reach the hub and the file is not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    with pytest.raises(MissingInputsError) as error:
        fetch(paper["params"], "work/imagenet/fetched.json")
    message = str(error.value)
    assert message.startswith("2 external input(s) of scale 'imagenet' could not be fetched")
    assert "hf auth login" in message and "HF_TOKEN" in message
    assert "weights/dino-vits16" in message and "where there is network" in message
    # offline, the up-front refusal says the same about logging in
    go_offline(monkeypatch, True)
    with pytest.raises(MissingInputsError, match="FLUX.1-dev is gated: accept its licence"):
        external_inputs.check_external_inputs(paper["params"])


def test_your_own_files_are_recorded_and_never_replaced(paper, monkeypatch):
    no_downloads(monkeypatch)
    Path("weights/dino-vits16").mkdir(parents=True)
    Path("weights/kl16.safetensors").write_bytes(b"my own conversion of MAR's kl16.ckpt")
    Path("weights/dino-vits16/model.safetensors").write_bytes(b"my DINO")
    Path("weights/inception.pth").write_bytes(b"random Inception weights for a test")
    paper["params"]["evaluate"]["inception_weights"] = "weights/inception.pth"
    record = fetch(paper["params"], "work/imagenet/fetched.json")
    checks = {entry["where"]: entry["check"] for entry in record["inputs"]}
    assert checks == {"weights/kl16.safetensors": "none: your own file",
                      "weights/dino-vits16/model.safetensors": "none: your own file",
                      "weights/inception.pth": "none: your own file (not the published one)"}
    assert not Path("weights/kl16.safetensors").is_symlink()
    assert Path("weights/kl16.safetensors").read_bytes() == b"my own conversion of MAR's kl16.ckpt"

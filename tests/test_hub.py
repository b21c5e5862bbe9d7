"""Tokenizer on huggingface_hub's ModelHubMixin: loading by repo id from a local HF cache offline
(revisions included), and the model card a saved tokenizer carries. push_to_hub is the mixin's
own and needs the network, so it is not tested here."""
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants, scan_cache_dir

from coda import Tokenizer
from coda.evaluation import evaluate_tokenizer
from coda.files import UnreadableFileError
from coda.quantizers import build_quantizer

sys.path.insert(0, str(Path(__file__).parent))
from test_evaluate import photo_crops  # noqa: E402
from test_tokenizer import small_tokenizer  # noqa: E402

REPO = "coda-org/coda-tiny"


def add_to_cache(cache: Path, repo_id: str, folder: Path, ref: str, commit: str | None = None) -> str:
    """Lay ``folder`` (subfolders too) out as the Hub's cache does after a download: blobs named by
    the checksum the hub publishes (git's blob hash for .json files, which the hub keeps in git; the
    sha256 of LFS files), a snapshot per commit symlinking them, and ``refs/<ref>`` naming the
    commit. Returns the commit."""
    from huggingface_hub.utils.sha import git_hash

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = commit or hashlib.sha1(f"{ref}:{folder}".encode()).hexdigest()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = repo / "blobs" / (git_hash(data) if path.suffix == ".json" else hashlib.sha256(data).hexdigest())
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, blob)
        link = repo / "snapshots" / commit / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(Path(os.path.relpath(blob, link.parent)))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return commit


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty HF cache as the default one, with HF_HUB_OFFLINE=1 (huggingface_hub reads both at import)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def assert_same_weights(a: Tokenizer, b: Tokenizer):
    assert a.config == b.config
    for (k1, v1), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1


def test_loads_by_repo_id_and_revision_from_the_local_cache_offline(tmp_path, offline_cache):
    main, tagged = small_tokenizer(seed=0), small_tokenizer(kind="rvq", lora=False, seed=1)
    main_commit = add_to_cache(offline_cache, REPO, main.save_pretrained(tmp_path / "main"), "main")
    tagged_commit = add_to_cache(offline_cache, REPO, tagged.save_pretrained(tmp_path / "v2"), "v2")
    cached = {repo.repo_id: repo for repo in scan_cache_dir(offline_cache).repos}  # the hub's own reader
    assert {r.commit_hash for r in cached[REPO].revisions} == {main_commit, tagged_commit}

    loaded = Tokenizer.from_pretrained(REPO)
    assert_same_weights(loaded, main)
    assert not loaded.training
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(loaded.reconstruct(x, torch.Generator().manual_seed(3)),
                       main.reconstruct(x, torch.Generator().manual_seed(3)))
    assert_same_weights(Tokenizer.from_pretrained(REPO, revision="v2"), tagged)
    assert_same_weights(Tokenizer.from_pretrained(REPO, revision=tagged_commit), tagged)
    # an explicit cache_dir wins over the default cache
    other = tmp_path / "other-cache"
    add_to_cache(other, REPO, tmp_path / "v2", "main")
    assert_same_weights(Tokenizer.from_pretrained(REPO, cache_dir=other), tagged)


def test_an_uncached_repo_or_a_missing_folder_is_file_not_found(tmp_path, offline_cache):
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_pretrained("coda-org/never-downloaded")
    with pytest.raises(FileNotFoundError, match="tokenizer directory"):
        Tokenizer.from_pretrained(tmp_path / "work/demo/train/coda/tokenizer")
    add_to_cache(offline_cache, REPO, small_tokenizer().save_pretrained(tmp_path / "tok"), "main")
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_pretrained(REPO, revision="v9")


def test_a_corrupt_config_names_the_directory(tmp_path):
    small_tokenizer().save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"vae": ')
    with pytest.raises(UnreadableFileError, match=f"{tmp_path} is not a readable tokenizer directory"):
        Tokenizer.from_pretrained(tmp_path)


def test_saved_tokenizer_carries_a_card_with_its_measured_metrics(tmp_path):
    tokenizer = small_tokenizer()
    directory = tokenizer.save_pretrained(tmp_path / "tok")
    plain = (directory / "README.md").read_text()
    assert "Not evaluated yet" in plain and "bits per image | 510 (85 x log2 64)" in plain

    val = tmp_path / "val.npy"
    np.save(val, photo_crops(4, size=16))
    metrics_file = tmp_path / "metrics.json"
    record = evaluate_tokenizer(tokenizer, val, metrics_file, batch_size=2, device="cpu",
                                perceptual=False, meta={"experiment": "coda", "model_path": directory})
    figure = tmp_path / "figures/reconstructions.png"
    figure.parent.mkdir()
    figure.write_bytes(b"\x89PNG test figure")
    tokenizer.save_pretrained(directory, model_card_kwargs={"metrics": metrics_file, "figure": figure})

    card = (directory / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: coda" in card and "license: apache-2.0" in card
    assert "# CODA tokenizer: coda" in card and "Not evaluated yet" not in card
    assert f"| PSNR (dB) | {record['psnr']:.2f} |" in card and f"| SSIM | {record['ssim']:.3f} |" in card
    assert f"| codebook utilization | {record['codebook_utilization']:.1%} |" in card
    assert f"not computed: {record['rfid_missing_reason']}" in card  # a missing number says why
    assert f"| Inception Score | not computed: {record['inception_score_missing_reason']} |" in card
    assert "FID protocol torch-fidelity" in card
    assert record["model_sha256"] in card and "scales | 1, 2, 4, 8" in card
    assert "![reconstructions](reconstructions.png)" in card
    assert (directory / "reconstructions.png").read_bytes() == figure.read_bytes()
    assert "@InProceedings{Liu_2025_ICCV" in card
    assert_same_weights(Tokenizer.from_pretrained(directory), tokenizer)  # the card changes no weights

    # the same record as a dict; metrics of another tokenizer are refused
    assert tokenizer.generate_model_card(metrics=record).content.count(f"{record['psnr']:.2f}") == 1
    other = json.loads(metrics_file.read_text()) | {"codebook_size": 512}
    with pytest.raises(ValueError, match="not of this tokenizer"):
        tokenizer.generate_model_card(metrics=other)


def release_layout(folder: Path, monkeypatch) -> dict:
    """The authors' hub repository in its layout (mar_v16384/, flux_v65536/: vae_ema.pth +
    quantizer_ema.pth), with narrow VAEs of the two released architectures so the files are small
    (the settings of each variant are patched to the same narrow widths). {variant: tokenizer of the local files}."""
    from coda.compat.release import OFFICIAL_SETTINGS
    from coda.compat.vae import FLUX_VAE, build_vae, export_official_vae_state_dict
    from coda.compat.release import RELEASED_FILES

    narrow = {"f16": {**OFFICIAL_SETTINGS["f16"]["vae"], "ch": 32, "lora_rank": 4},
              "f8": {**OFFICIAL_SETTINGS["f8"]["vae"], "lora_rank": 4,
                     "diffusers_config": {**FLUX_VAE, "block_out_channels": [32, 32, 32, 32]}}}
    local = {}
    for variant, vae_settings in narrow.items():
        monkeypatch.setitem(OFFICIAL_SETTINGS, variant, {**OFFICIAL_SETTINGS[variant], "vae": vae_settings})
        torch.manual_seed(len(local))
        vae_state = export_official_vae_state_dict(build_vae(vae_settings), vae_settings)
        vae_state = {k: v + 0.01 * torch.randn_like(v) if "lora_layer.up" in k else v for k, v in vae_state.items()}
        released = OFFICIAL_SETTINGS[variant]["quantizer"]
        quantizer = build_quantizer("coda", codebook_size=released["codebook_size"], dim=16, scales=released["scales"])
        vae_file, quantizer_file = (folder / name for name in RELEASED_FILES[variant])
        vae_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(vae_state, vae_file)
        torch.save(quantizer.state_dict(), quantizer_file)
        local[variant] = Tokenizer.from_official(vae_file, quantizer_file, variant=variant)
    return local


def test_released_checkpoints_load_by_hub_repo_and_variant_offline(tmp_path, offline_cache, monkeypatch):
    from coda.config import experiment_config, load_params
    from coda.compat.release import RELEASED_REPO
    from coda.train.stage import save_released
    from helpers import ROOT

    local = release_layout(tmp_path / "release", monkeypatch)
    add_to_cache(offline_cache, RELEASED_REPO, tmp_path / "release", "main")
    assert_same_weights(Tokenizer.from_official(variant="f16"), local["f16"])  # the authors' repository by default
    f8 = Tokenizer.from_official(repo_id=RELEASED_REPO, variant="f8")
    assert_same_weights(f8, local["f8"])
    assert f8.quantizer.codebook_size == 65536 and f8.lora["targets"] == ["conv1", "conv2"]
    with pytest.raises(FileNotFoundError):  # offline, a repository that is not cached
        Tokenizer.from_official(repo_id="coda-org/not-cached", variant="f16")

    # the pipeline's `released` experiment names the repository; its train stage reads the cache only
    experiment = experiment_config(load_params(ROOT / "params.yaml", scale="imagenet"), "released")
    assert experiment["repo"] == RELEASED_REPO and experiment["variant"] == "f16"
    save_released({**experiment, "variant": "f8"}, tmp_path / "train")
    assert_same_weights(Tokenizer.from_pretrained(tmp_path / "train/tokenizer"), local["f8"])

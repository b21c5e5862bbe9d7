"""The trainer end to end on tiny models (CPU, one thread each, a handful of steps).

Covers: an images-mode run (LoRA + PatchGAN + LPIPS) lowering the reconstruction loss, a
latents-mode run using the codebook, NaN handling, resume after SIGKILL being bit-exact, two
processes staying in sync and matching one process with the same global batch, the speed options,
epoch-based run length, the quantizer warm-up, and the `coda train` command (released files too).
"""
import json
from pathlib import Path
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from coda.train.loop import NonFiniteLossError
from coda.train.stage import train
from coda.files import UnreadableFileError
from coda.train.checkpoint import checkpoint_files, load_checkpoint
from coda.train.checkpoint import trainable_state

LORA = {"rank": 4, "targets": ["conv1", "conv2", "upsample", "downsample"], "where": "both"}
QUANTIZER = {"kind": "coda", "codebook_size": 32, "dim": 4, "attn_dim": 8, "scales": [1, 2, 4, 8]}
SUBPROCESS_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

# Runs train() in a fresh process: kills itself with SIGKILL after step `kill_at`, and writes
# every rank's final weights so that ranks and runs can be compared bitwise.
RUNNER = r"""
import json, os, signal, sys
import torch
torch.set_num_threads(1)
from safetensors.torch import save_file
from coda.train.stage import train
from coda.train.checkpoint import trainable_state

experiment, vae, out, images, kill_at = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])

def on_step(step, values):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

result = train(experiment, vae, out, images=images, on_step=on_step)
rank = int(os.environ.get("RANK", "0"))
state = {f"model/{k}": v for k, v in trainable_state(result.tokenizer).items()}
state.update({f"ema/{k}": v for k, v in trainable_state(result.ema_tokenizer, like=result.tokenizer).items()})
state.update({f"disc/{k}": v for k, v in result.discriminator.state_dict().items()})
save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out, f"weights-rank{rank}.safetensors"))
"""


@pytest.fixture(autouse=True)
def one_thread():
    """One thread per run: the machines are shared, and thread count must match subprocesses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    """A random-init diffusers KL-VAE, f4, 4 latent channels: 32 x 32 images -> 8 x 8 latents."""
    from coda.vae import ContinuousVAE

    directory = tmp_path_factory.mktemp("vae")
    vae = ContinuousVAE.small(seed=0, block_out_channels=[8, 16, 16], norm_num_groups=8, latent_channels=4)
    vae.autoencoder.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def photo_crops(tmp_path_factory):
    """16 real 32 x 32 crops of scikit-image's astronaut (downscaled 4x), uint8 N x H x W x 3."""
    from coda.data.photos import load_photo

    image = load_photo("astronaut").astype(np.float32).reshape(128, 4, 128, 4, 3).mean((1, 3))
    crops = np.stack([image[i:i + 32, j:j + 32] for i in range(0, 128, 32) for j in range(0, 128, 32)])
    path = tmp_path_factory.mktemp("images") / "train.npy"
    np.save(path, crops.round().astype(np.uint8))
    return path


def _latent_cache(directory, mean, logvar):
    """The cache format of docs/interfaces.md: manifest.json + one fp16 shard."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({"mean": mean.half().contiguous(), "logvar": logvar.half().contiguous()},
              directory / "train-00000.safetensors")
    manifest = {"vae_hash": "test", "vae_config": {}, "preprocessing": {}, "dtype": "float16",
                "latent_shape": list(mean.shape[1:]),
                "splits": {"train": {"count": len(mean), "shards": ["train-00000.safetensors"]}}}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def _images_experiment(**train):
    settings = {"batch_size": 4, "grad_accum": 1, "max_steps": 6, "patchgan_channels": 8, "patchgan_layers": 2,
                "lpips_weight": 0.0, "checkpoint_every": 2, "progress_interval": 5}
    return {"quantizer": QUANTIZER, "lora": LORA, "posterior": "sample", "train": {**settings, **train}}


def _reconstruction_error(tokenizer, images):
    tokenizer.posterior = "mean"
    with torch.no_grad():
        return float(((tokenizer.reconstruct(images) - images) ** 2).mean())


def test_images_mode_with_lora_and_patchgan_lowers_reconstruction_loss(tmp_path, tiny_vae, photo_crops):
    from coda.data.datasets import ArrayImages
    from coda.tokenizer import Tokenizer
    from coda.train.inputs import build_tokenizer

    experiment = _images_experiment(max_steps=16, lr=5e-3, lpips_weight=1.0, save_live=True, checkpoint_every=8)
    result = train(experiment, tiny_vae, tmp_path, images=photo_crops)
    images = torch.stack([ArrayImages(photo_crops)[i] for i in range(16)])
    torch.manual_seed(42)
    before = _reconstruction_error(build_tokenizer(experiment, tiny_vae, "images"), images)
    after = _reconstruction_error(Tokenizer.from_pretrained(tmp_path / "tokenizer"), images)
    assert after < 0.97 * before, (before, after)
    assert _reconstruction_error(Tokenizer.from_pretrained(tmp_path / "tokenizer_live"), images) < before

    run = json.loads((tmp_path / "run.json").read_text())
    assert run["discriminator"]["kind"] == "patchgan" and run["data_mode"] == "images"
    assert run["adaptive_weight_target"] == "f16" and run["lpips"] == "vgg" and run["status"] == "finished"
    assert run["config"]["train"]["lr"] == 5e-3 and run["device"] == "cpu" and "torch" in run["versions"]
    rows = [line.split("\t") for line in (tmp_path / "train_log.tsv").read_text().splitlines()]
    header = rows[0]
    assert header[:5] == ["step", "phase", "epoch", "lr", "loss"] and {r[1] for r in rows[1:]} == {"images"}
    for column in ("l1", "mse", "lpips", "vq", "entropy", "gan_g", "adaptive_weight", "d_loss", "images_per_s"):
        assert column in header
    assert [int(r[0]) for r in rows[1:]] == list(range(1, 17))
    assert result.step == 16 and load_checkpoint(newest(tmp_path))["step"] == 16


def test_latents_mode_coda_quantizer_uses_the_codebook(tmp_path, tiny_vae):
    g = torch.Generator().manual_seed(0)
    cache = _latent_cache(tmp_path / "cache", torch.randn(64, 4, 8, 8, generator=g), torch.full((64, 4, 8, 8), -6.0))
    quantizer = {**QUANTIZER, "codebook_size": 16}
    experiment = {"quantizer": quantizer, "lora": None, "posterior": "sample",
                  "train": {"data_mode": "latents", "batch_size": 16, "grad_accum": 1, "max_steps": 80,
                            "lr": 1e-2, "checkpoint_every": 80, "progress_interval": 5}}
    result = train(experiment, tiny_vae, tmp_path / "out", latents=cache)
    from coda.cache import LatentDataset

    latents = result.ema_tokenizer.vae.normalize(LatentDataset(cache, "train").mean)
    with torch.no_grad():
        out = result.ema_tokenizer.quantizer(latents)
    used = torch.unique(torch.cat([i.flatten() for i in out.indices])).numel()
    assert used >= 0.9 * 16, used
    rows = [line.split("\t") for line in (tmp_path / "out/train_log.tsv").read_text().splitlines()]
    column = rows[0].index("latent_mse")
    assert float(rows[-1][column]) < float(rows[1][column])
    assert json.loads((tmp_path / "out/run.json").read_text())["discriminator"] is None


class PoisonedLatents(torch.utils.data.Dataset):
    """Finite latents until `poison` is set, NaN afterwards."""

    def __init__(self, n=16):
        self.mean = torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        self.poison = False

    def __len__(self):
        return len(self.mean)

    def __getitem__(self, i):
        mean = self.mean[i] * (float("nan") if self.poison else 1.0)
        return mean, torch.full_like(mean, -6.0)


def _latents_experiment(**train):
    return {"quantizer": {**QUANTIZER, "codebook_size": 16}, "lora": None,
            "train": {"data_mode": "latents", "batch_size": 8, "grad_accum": 1, "max_steps": 6,
                      "checkpoint_every": 2, "progress_interval": 5, **train}}


def test_nan_loss_stops_with_step_and_loss_named_and_keeps_last_checkpoint(tmp_path, tiny_vae):
    data = PoisonedLatents()

    def poison_after_step_3(step, values):
        data.poison = step >= 3

    with pytest.raises(NonFiniteLossError, match=r"step 4: loss 'latent_mse' is nan.*step 2\) is kept"):
        train(_latents_experiment(), tiny_vae, tmp_path, latents=data, on_step=poison_after_step_3)
    state = load_checkpoint(newest(tmp_path))
    assert state["step"] == 2
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert not (tmp_path / "tokenizer").exists()


def test_changed_settings_start_over_and_keep_the_old_checkpoint(tmp_path, tiny_vae, capsys):
    """A parameter change (dvc exp run -S ...) must retrain, not resume, and lose nothing."""
    train(_latents_experiment(max_steps=2), tiny_vae, tmp_path, latents=PoisonedLatents())
    old = load_checkpoint(newest(tmp_path))
    result = train(_latents_experiment(max_steps=2, lr=1e-3), tiny_vae, tmp_path, latents=PoisonedLatents())
    assert result.step == 2 and "train.lr" in capsys.readouterr().err
    [kept] = (tmp_path / "checkpoints/superseded").glob("*/step-00000002.safetensors")
    assert load_checkpoint(kept)["experiment"] == old["experiment"]
    assert load_checkpoint(newest(tmp_path))["experiment"]["train"]["lr"] == 1e-3
    assert json.loads((tmp_path / "run.json").read_text())["resumed_from"] == []


def newest(out_dir: Path) -> Path:
    return checkpoint_files(out_dir / "checkpoints")[0]


def test_a_truncated_last_checkpoint_resumes_bit_exactly_from_the_previous_one(tmp_path, tiny_vae, capsys):
    """keep_checkpoints (2) files stay; a damaged newest one costs one interval, never the run."""
    experiment = _latents_experiment(max_steps=6)
    reference = train(experiment, tiny_vae, tmp_path / "reference", latents=PoisonedLatents())
    damaged = tmp_path / "damaged"

    def crash_after_step_5(step, values):
        if step == 5:
            raise KeyboardInterrupt  # the run dies one step after its checkpoint of step 4

    with pytest.raises(KeyboardInterrupt):
        train(experiment, tiny_vae, damaged, latents=PoisonedLatents(), on_step=crash_after_step_5)
    files = checkpoint_files(damaged / "checkpoints")
    assert [f.name for f in files] == ["step-00000004.safetensors", "step-00000002.safetensors"]
    files[0].write_bytes(files[0].read_bytes()[:1000])  # truncated, as by a full disk or a killed copy
    result = train(experiment, tiny_vae, damaged, latents=PoisonedLatents())
    err = capsys.readouterr().err
    assert "step-00000004.safetensors is not a readable coda training checkpoint" in err
    assert "resuming from" in err and "step-00000002" in err
    assert json.loads((damaged / "run.json").read_text())["resumed_from"][-1] == 2
    _assert_equal(trainable_state(result.ema_tokenizer, like=result.tokenizer),
                  trainable_state(reference.ema_tokenizer, like=reference.tokenizer))
    assert [f.name for f in checkpoint_files(damaged / "checkpoints")] == [
        "step-00000006.safetensors", "step-00000004.safetensors"]


def test_no_readable_checkpoint_is_reported_and_nothing_is_deleted(tmp_path, tiny_vae):
    train(_latents_experiment(max_steps=2), tiny_vae, tmp_path, latents=PoisonedLatents())
    only = newest(tmp_path)
    only.write_bytes(b"not a checkpoint")
    with pytest.raises(UnreadableFileError, match="no readable checkpoint.*move or delete"):
        train(_latents_experiment(max_steps=2), tiny_vae, tmp_path, latents=PoisonedLatents())
    assert only.read_bytes() == b"not a checkpoint"


def _run_in_process(experiment, vae, out, images):
    result = train(experiment, vae, out, images=images)
    state = {f"model/{k}": v for k, v in trainable_state(result.tokenizer).items()}
    state.update({f"ema/{k}": v for k, v in trainable_state(result.ema_tokenizer, like=result.tokenizer).items()})
    state.update({f"disc/{k}": v for k, v in result.discriminator.state_dict().items()})
    return state


def _runner(tmp_path):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    return script


def _assert_equal(a: dict, b: dict, keys=None):
    keys = sorted(a) if keys is None else keys
    assert keys and set(keys) <= set(a) and set(keys) <= set(b)
    different = [k for k in keys if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def test_resume_after_sigkill_is_bit_exact(tmp_path, tiny_vae, photo_crops):
    experiment = _images_experiment()            # 6 steps, checkpoints at 2, 4, 6
    killed = tmp_path / "killed"
    args = [sys.executable, str(_runner(tmp_path)), json.dumps(experiment), str(tiny_vae), str(killed),
            str(photo_crops)]
    # the run dies by SIGKILL after step 5, one step past the checkpoint of step 4;
    # meanwhile the uninterrupted reference run trains here
    process = subprocess.Popen(args + ["5"], env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    reference = _run_in_process(experiment, tiny_vae, tmp_path / "reference", photo_crops)
    output = process.communicate(timeout=300)[0].decode()
    assert process.returncode == -signal.SIGKILL, output
    assert load_checkpoint(newest(killed))["step"] == 4
    assert not (killed / "tokenizer").exists()
    # the curves so far live beside the checkpoints; train_log.tsv (a declared output, which both
    # engines delete before a rerun) is published only when the run ends
    assert not (killed / "train_log.tsv").exists()
    assert [r.split("\t")[0] for r in (killed / "checkpoints/train_log.tsv").read_text().splitlines()[1:]] == \
        ["1", "2", "3", "4", "5"]

    rerun = subprocess.run(args + ["-1"], env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads((killed / "run.json").read_text())["resumed_from"] == [4]
    steps = [int(line.split("\t")[0]) for line in (killed / "train_log.tsv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]          # step 5 of the killed run was dropped and redone

    _assert_equal(load_file(killed / "weights-rank0.safetensors"), reference)
    assert ((killed / "tokenizer/model.safetensors").read_bytes()
            == (tmp_path / "reference/tokenizer/model.safetensors").read_bytes())
    _assert_equal(load_file(newest(killed)), load_file(newest(tmp_path / "reference")))


def test_two_processes_stay_in_sync_and_match_one_process(tmp_path, tiny_vae, photo_crops):
    """One experiment with ``global_batch: 4``: 2 ranks x 2 images vs 1 process x 2 micro-batches of 2.

    Micro-batch m goes to rank m (or accumulation round m), the posterior noise is seeded by m,
    and the adaptive weight and BatchNorm statistics are per micro-batch in both, so the summed
    gradients -- hence all weights -- are bitwise equal. The discriminator's BatchNorm running
    statistics (never used: it always runs in train mode) are rank 0's in the 2-process run.
    """
    two, experiment = tmp_path / "two", _images_experiment(batch_size=2, global_batch=4, max_steps=3)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(_runner(tmp_path)), json.dumps(experiment), str(tiny_vae), str(two), str(photo_crops), "-1"]
    process = subprocess.Popen(command, env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    single = _run_in_process(experiment, tiny_vae, tmp_path / "one", photo_crops)
    output = process.communicate(timeout=300)[0].decode()
    assert process.returncode == 0, output[-3000:]
    rank0, rank1 = (load_file(two / f"weights-rank{r}.safetensors") for r in (0, 1))
    _assert_equal(rank0, rank1)                                        # everything, buffers included
    assert json.loads((two / "run.json").read_text())["world_size"] == 2
    for out, world, accumulation in ((two, 2, 1), (tmp_path / "one", 1, 2)):   # 16 images / 4: 4 steps per epoch
        run = json.loads((out / "run.json").read_text())
        assert ((run["world_size"], run["global_batch"], run["grad_accum"], run["steps_per_epoch"],
                 run["total_steps"]) == (world, 4, accumulation, 4, 3))
    running_stats = {k for k in single if "running_" in k or "num_batches" in k}
    _assert_equal(rank0, single, sorted(set(single) - running_stats))


def _params(experiment: dict, **experiments) -> dict:
    """A minimal params.yaml whose base experiment is ``experiment``."""
    scale = {"prepare": {"source": "demo", "resolution": 32}, "vae": {"source": "train_small"},
             "experiment": {}, "experiments": {}}
    return {"scale": "test", "scales": {"test": scale}, "experiments": {"base": experiment, **experiments},
            "pipeline": {"experiments": list(experiments)}}


def _coda_train(tmp_path, params: dict, experiment: str, vae_dir, cache, out):
    import yaml

    from coda.cli import main

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return main(["train", "--params", str(tmp_path / "params.yaml"), "--experiment", experiment,
                 "--prepared", str(tmp_path / "no-images"), "--vae", str(vae_dir), "--cache", str(cache),
                 "--out", str(out)])


def test_coda_train_command_trains_and_resumes(tmp_path, tiny_vae):
    g = torch.Generator().manual_seed(0)
    cache = _latent_cache(tmp_path / "cache", torch.randn(16, 4, 8, 8, generator=g), torch.full((16, 4, 8, 8), -6.0))
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae/vae").symlink_to(tiny_vae)                # the vae stage's layout: VAE_DIR/vae
    experiment = _latents_experiment(max_steps=2)
    experiment["quantizer"] = {k: v for k, v in experiment["quantizer"].items() if k != "dim"}  # from the VAE
    params = _params(experiment, latent={})
    assert _coda_train(tmp_path, params, "latent", tmp_path / "vae", cache, tmp_path / "out") == 0
    assert (tmp_path / "out/tokenizer/model.safetensors").exists()
    assert _coda_train(tmp_path, params, "latent", tmp_path / "vae", cache, tmp_path / "out") == 0  # resumes at the end
    assert json.loads((tmp_path / "out/run.json").read_text())["resumed_from"] == [2]


def test_coda_train_starts_its_own_ranks(tmp_path, tiny_vae):
    """train.processes: 2: the plain `coda train` command (the pipeline's) runs 2 ranks through torch's
    elastic launcher and trains what 1 process trains with the same global batch, bit for bit; a user
    error in the ranks is the command's exit status 2, with the ranks' message."""
    g = torch.Generator().manual_seed(0)
    cache = _latent_cache(tmp_path / "cache", torch.randn(16, 4, 8, 8, generator=g), torch.full((16, 4, 8, 8), -6.0))
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae/vae").symlink_to(tiny_vae)
    experiment = _latents_experiment(max_steps=3, batch_size=2, global_batch=4)
    experiment["quantizer"] = {k: v for k, v in experiment["quantizer"].items() if k != "dim"}
    env = {**SUBPROCESS_ENV, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "CUDA_VISIBLE_DEVICES": ""}

    def coda_train(processes, out, **train):
        import yaml

        params = _params(experiment, latent={"train": {"processes": processes, **train}})
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        return subprocess.run([sys.executable, "-m", "coda", "train", "--params", str(tmp_path / "params.yaml"),
                               "--experiment", "latent", "--prepared", str(tmp_path / "no-images"), "--vae",
                               str(tmp_path / "vae"), "--cache", str(cache), "--out", str(out), "--log",
                               str(out) + ".log"], capture_output=True, text=True, timeout=600,
                              env={**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})  # per rank

    for processes in (2, 1):
        result = coda_train(processes, tmp_path / f"p{processes}")
        assert result.returncode == 0, result.stderr[-3000:]
        run = json.loads((tmp_path / f"p{processes}/run.json").read_text())
        assert (run["world_size"], run["grad_accum"], run["global_batch"]) == (processes, 2 // processes, 4)
    log = (tmp_path / "p2.log").read_text()
    assert log.startswith("coda train: starting 2 processes") and "world_size" not in log
    assert ((tmp_path / "p2/tokenizer/model.safetensors").read_bytes()
            == (tmp_path / "p1/tokenizer/model.safetensors").read_bytes())

    result = coda_train(2, tmp_path / "bad", batch_size=3)  # 4 images per step cannot split into 2 x 3
    assert result.returncode == 2 and "train.global_batch 4 is not a multiple" in result.stderr
    assert "Traceback" not in result.stderr


def test_lr_schedule_span_stretches_the_cosine(tmp_path, tiny_vae):
    """lr_schedule_span 2 on a 3-step run: lr0 (1 + cos(pi t / 6)) / 2 at step t, by hand 1, 0.933, 0.75."""
    g = torch.Generator().manual_seed(0)
    cache = _latent_cache(tmp_path / "cache", torch.randn(16, 4, 8, 8, generator=g), torch.full((16, 4, 8, 8), -6.0))
    train(_latents_experiment(max_steps=3, lr=1e-3, lr_schedule_span=2), tiny_vae, tmp_path / "out", latents=cache)
    log = (tmp_path / "out/train_log.tsv").read_text().splitlines()
    rates = [float(dict(zip(log[0].split("\t"), line.split("\t")))["lr"]) for line in log[1:]]
    assert rates == pytest.approx([1e-3, 0.9330127e-3, 0.75e-3])


def test_coda_train_converts_released_checkpoints(tmp_path, capsys):
    """kind: released: the authors' .pth files become a tokenizer directory, nothing trains."""
    from coda.compat.release import OFFICIAL_SETTINGS
    from coda.compat.vae import build_vae, export_official_vae_state_dict
    from coda.quantizers import build_quantizer
    from coda.tokenizer import Tokenizer

    settings = OFFICIAL_SETTINGS["f16"]
    torch.manual_seed(0)
    vae_state = export_official_vae_state_dict(build_vae(settings["vae"]), settings["vae"])
    quantizer = build_quantizer("coda", codebook_size=16384, dim=16)
    torch.save(vae_state, tmp_path / "vae_ema.pth")
    torch.save(quantizer.state_dict(), tmp_path / "quantizer_ema.pth")
    released = {"kind": "released", "variant": "f16", "posterior": "mean",
                "vae_file": str(tmp_path / "vae_ema.pth"), "quantizer_file": str(tmp_path / "quantizer_ema.pth")}
    params = _params({"quantizer": {"kind": "coda"}}, released=released)
    assert _coda_train(tmp_path, params, "released", tmp_path / "no-vae", tmp_path / "no-cache", tmp_path / "out") == 0
    tokenizer = Tokenizer.from_pretrained(tmp_path / "out/tokenizer")
    assert tokenizer.posterior == "mean" and tokenizer.indices_per_image == 680
    exported = export_official_vae_state_dict(tokenizer.vae, settings["vae"])
    assert all(torch.equal(exported[k], v) for k, v in vae_state.items())
    assert all(torch.equal(tokenizer.quantizer.state_dict()[k], v) for k, v in quantizer.state_dict().items())
    assert (tmp_path / "out/train_log.tsv").read_text() == "step\n"

    released["vae_file"] = str(tmp_path / "missing.pth")
    assert _coda_train(tmp_path, params, "released", tmp_path / "no-vae", tmp_path / "no-cache", tmp_path / "new") == 2
    assert "experiments.released.vae_file" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_epochs_set_the_run_length_when_max_steps_is_unset(tmp_path, tiny_vae):
    data = PoisonedLatents(n=32)                                 # 32 items / batch 8: 4 steps per epoch
    result = train(_latents_experiment(max_steps=None, epochs=1.25), tiny_vae, tmp_path, latents=data)
    assert result.step == 5                                      # ceil(1.25 x 4)
    run = json.loads((tmp_path / "run.json").read_text())
    assert (run["steps_per_epoch"], run["total_steps"], run["steps"]) == (4, 5, 5)
    epochs = [int(line.split("\t")[2]) for line in (tmp_path / "train_log.tsv").read_text().splitlines()[1:]]
    assert epochs == [0, 0, 0, 0, 1]


def _first_step_losses(out_dir) -> dict:
    rows = [line.split("\t") for line in (out_dir / "train_log.tsv").read_text().splitlines()]
    return {name: float(value) for name, value in zip(rows[0], rows[1]) if name != "phase"}  # latents | images


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory, tiny_vae, photo_crops):
    out = tmp_path_factory.mktemp("fp32")
    train(_images_experiment(max_steps=2), tiny_vae, out, images=photo_crops)
    return out


@pytest.mark.parametrize("option, rel", [("channels_last", 1e-4), ("bf16", 5e-2), ("compile", 1e-4)])
def test_speed_options_train_on_cpu_and_compute_the_same_losses(tmp_path, tiny_vae, photo_crops, fp32_run,
                                                                  option, rel):
    """Each speed flag runs the images-mode step (LoRA + PatchGAN) on CPU, and its first step's losses
    (the initial weights, before any update) match fp32: it changes speed, not the objective.
    The logits are near 0, so the tolerance is absolute as well as relative."""
    if option == "compile" and not hasattr(torch, "compile"):
        pytest.skip("torch.compile is not available")
    result = train(_images_experiment(max_steps=2, **{option: True}), tiny_vae, tmp_path, images=photo_crops)
    assert result.step == 2 and (tmp_path / "tokenizer/model.safetensors").exists()
    fast, slow = _first_step_losses(tmp_path), _first_step_losses(fp32_run)
    for name in ("l1", "mse", "nll", "vq", "gan_g", "d_loss"):
        assert fast[name] == pytest.approx(slow[name], rel=rel, abs=rel), name
    assert json.loads((tmp_path / "run.json").read_text())["config"]["train"][option] is True


def test_images_mode_frozen_vae_with_dino_discriminator(tmp_path, tiny_vae, photo_crops):
    """No LoRA: the adaptive weight is taken at the decoder input; DINO from a local tiny ViT."""
    from transformers import ViTConfig, ViTModel

    from coda.discriminators.dino import VIT_S16_CONFIG

    vit = dict(VIT_S16_CONFIG, hidden_size=16, num_attention_heads=2, intermediate_size=32, image_size=32)
    torch.manual_seed(0)
    ViTModel(ViTConfig(**vit), add_pooling_layer=False).save_pretrained(tmp_path / "dino")
    experiment = _images_experiment(max_steps=2, dino_weights=str(tmp_path / "dino"))
    experiment["lora"] = None
    result = train(experiment, tiny_vae, tmp_path / "out", images=photo_crops)
    run = json.loads((tmp_path / "out/run.json").read_text())
    assert run["discriminator"]["kind"] == "dino" and run["discriminator"]["weights"] == str(tmp_path / "dino")
    assert run["adaptive_weight_target"] == "decoder_input"
    rows = [line.split("\t") for line in (tmp_path / "out/train_log.tsv").read_text().splitlines()]
    assert float(rows[-1][rows[0].index("adaptive_weight")]) > 0
    assert not any(p.requires_grad for p in result.tokenizer.vae.parameters())


def test_quantizer_warmup_on_latents_then_images(tmp_path, tiny_vae, photo_crops):
    """quantizer_warmup_steps: a latents-mode run first, whose EMA quantizer starts the images run.

    The stage must equal its two steps done by hand: a latents-mode run of 3 steps at
    quantizer_warmup_lr, then an images-mode run at lr initialised from that run's EMA quantizer.
    """
    from coda.tokenizer import Tokenizer
    from coda.train.config import TrainConfig
    from coda.train.inputs import open_dataset
    from coda.train.loop import fit
    from coda.train.distributed import setup

    g = torch.Generator().manual_seed(0)
    cache = _latent_cache(tmp_path / "cache", torch.randn(16, 4, 8, 8, generator=g), torch.full((16, 4, 8, 8), -6.0))
    experiment = _images_experiment(max_steps=2, quantizer_warmup_steps=3, quantizer_warmup_lr=2e-3)
    train(experiment, tiny_vae, tmp_path / "out", images=photo_crops, latents=cache)
    warm = json.loads((tmp_path / "out/quantizer_warmup/run.json").read_text())
    assert warm["data_mode"] == "latents" and warm["total_steps"] == 3 and warm["config"]["lora"] is None
    assert warm["config"]["train"]["lr"] == 2e-3
    rows = [line.split("\t") for line in (tmp_path / "out/train_log.tsv").read_text().splitlines()]
    rows = [dict(zip(rows[0], row)) for row in rows[1:]]  # the stage's curves: the warm-up, then the image run
    assert [(r["step"], r["phase"]) for r in rows] == [("1", "latents"), ("2", "latents"), ("3", "latents"),
                                                       ("4", "images"), ("5", "images")]
    assert [float(rows[i]["lr"]) for i in (0, 3)] == [2e-3, 5e-4]  # each phase's cosine starts at its own rate
    assert rows[0]["lpips"] == "" and rows[0]["latent_mse"] and rows[3]["l1"] and rows[3]["latent_mse"] == ""
    assert json.loads((tmp_path / "out/run.json").read_text())["data_mode"] == "images"

    warm_quantizer = Tokenizer.from_pretrained(tmp_path / "out/quantizer_warmup/tokenizer").quantizer.state_dict()
    cfg = TrainConfig.from_dict({**experiment["train"], "quantizer_warmup_steps": 0})
    by_hand = fit(cfg, {**experiment, "train": cfg.to_dict()}, tiny_vae, tmp_path / "by_hand",
                  open_dataset("images", photo_crops, None, cfg.seed), setup("cpu"), data="by hand",
                  init_quantizer=warm_quantizer)
    _assert_equal(load_file(tmp_path / "out/tokenizer/model.safetensors"),
                  load_file(tmp_path / "by_hand/tokenizer/model.safetensors"))
    cold = train(_images_experiment(max_steps=2), tiny_vae, tmp_path / "cold", images=photo_crops)
    assert not torch.equal(cold.ema_tokenizer.quantizer.codebooks.weight, by_hand.ema_tokenizer.quantizer.codebooks.weight)
    with pytest.raises(ValueError, match="latent cache"):
        train(experiment, tiny_vae, tmp_path / "other", images=photo_crops)


class Interrupt(Exception):
    pass


def test_curves_keep_their_history_when_the_engines_delete_train_log_before_a_rerun(tmp_path, tiny_vae, photo_crops):
    """A stage with a quantizer warm-up, stopped in its image phase, then rerun as Snakemake and DVC
    rerun it (train_log.tsv, a declared output, deleted first): the curves hold every step once."""
    g = torch.Generator().manual_seed(0)
    cache = _latent_cache(tmp_path / "cache", torch.randn(16, 4, 8, 8, generator=g), torch.full((16, 4, 8, 8), -6.0))
    experiment = _images_experiment(max_steps=4, quantizer_warmup_steps=3)   # checkpoints every 2 steps

    def stop_after_step_3(step, values):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(experiment, tiny_vae, tmp_path / "out", images=photo_crops, latents=cache, on_step=stop_after_step_3)
    (tmp_path / "out/train_log.tsv").unlink(missing_ok=True)
    train(experiment, tiny_vae, tmp_path / "out", images=photo_crops, latents=cache)
    rows = [line.split("\t") for line in (tmp_path / "out/train_log.tsv").read_text().splitlines()]
    assert [(r[0], r[1]) for r in rows[1:]] == [("1", "latents"), ("2", "latents"), ("3", "latents"),
                                               ("4", "images"), ("5", "images"), ("6", "images"), ("7", "images")]
    assert json.loads((tmp_path / "out/run.json").read_text())["resumed_from"] == [2]


def test_a_half_written_log_line_is_dropped_on_resume(tmp_path):
    from coda.train.log import TsvLog, read_rows

    path = tmp_path / "log.tsv"
    log = TsvLog(path, ["step", "loss"], keep_until=None)
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 0.5})
    with path.open("a") as f:
        f.write("4\t0.")                       # the process died (or the disk filled) mid-line
    TsvLog(path, ["step", "loss"], keep_until=4)
    assert [row[0] for row in read_rows(path)] == ["1", "2", "3"]

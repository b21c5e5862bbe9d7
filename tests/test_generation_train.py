"""The generator's trainer: VAR's schedule and weight-decay groups, learning on a toy token set,
and a run stopped at a checkpoint and resumed ends bit for bit where an uninterrupted run ends."""
import pytest
import torch
from torch.utils.data import Dataset

from coda.generation.train import GeneratorSettings, build_generator, fit, parameter_groups
from coda.schedule import lin0_learning_rate

SCALES = (1, 2, 3)


class ToyTokens(Dataset):
    """Class c's maps are mostly code c at every position: learnable from the label."""

    def __init__(self, n=48, classes=3, vocab=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % classes
        self.maps = [[torch.where(torch.rand(s, s, generator=g) < 0.8, self.labels[i].item(),
                                  torch.randint(vocab, (s, s), generator=g)) for s in SCALES] for i in range(n)]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.maps[i], int(self.labels[i])


def settings(**overrides):
    base = dict(depth=1, width=16, heads=2, batch_size=4, global_batch=8, max_steps=6, base_lr=4e-2,
                checkpoint_every=3, progress_interval=1000, device="cpu", seed=3)
    return GeneratorSettings.from_dict({**base, **overrides})


def model_for(cfg):
    torch.manual_seed(9)
    return build_generator(cfg, num_classes=3, scales=SCALES, code_values=torch.randn(16, 4),
                           tokenizer_sha256="abc", class_names=["a", "b", "c"])


def test_lin0_schedule_warms_up_holds_and_decays_to_the_final_fraction():
    lrs = [lin0_learning_rate(s, 1000, 100, 1.0, 0.1) for s in range(1000)]
    assert lrs[0] == pytest.approx(0.005) and lrs[50] == pytest.approx(0.005 + 0.995 * 0.5)
    assert lrs[100] == 1.0 and lrs[140] == 1.0  # held for 5 % of the 899 steps after warm-up
    assert lrs[999] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:]))


def test_no_weight_decay_on_biases_norms_positions_levels_and_scales():
    model = model_for(settings())
    decay, no_decay = parameter_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    off = {names[id(p)] for p in no_decay["params"]}
    on = {names[id(p)] for p in decay["params"]}
    assert {"pos_start", "pos_scales", "level_emb.weight", "blocks.0.attn.log_scale", "head.bias"} <= off
    assert {"class_emb.weight", "word_embed.weight", "head.weight", "blocks.0.attn.qkv.weight"} <= on
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_training_lowers_the_loss(tmp_path):
    cfg = settings(max_steps=30, checkpoint_every=100, warmup_epochs=0, class_dropout=0.0, base_lr=0.5)
    losses = []
    fit(cfg, model_for(cfg), ToyTokens(), tmp_path, on_step=lambda step, v: losses.append(v["loss"]))
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    header = (tmp_path / "train_log.tsv").read_text().splitlines()[0].split("\t")
    assert {"loss_s1", "loss_s3", "acc_s2"} <= set(header)
    assert (tmp_path / "generator" / "model.safetensors").exists()


class Stop(Exception):
    pass


def test_resume_after_a_stop_is_bit_exact(tmp_path):
    cfg = settings(drop_path=0.2)  # drop path draws from the global generator: its state is checkpointed
    whole = fit(cfg, model_for(cfg), ToyTokens(), tmp_path / "whole").model

    def stop_at_3(step, values):
        if step == 4:  # after the checkpoint of step 3, mid-way to the next
            raise Stop

    with pytest.raises(Stop):
        fit(cfg, model_for(cfg), ToyTokens(), tmp_path / "split", on_step=stop_at_3)
    torch.manual_seed(1234)  # whatever the new process's global state, the checkpoint's is restored
    resumed = fit(cfg, model_for(cfg), ToyTokens(), tmp_path / "split").model
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    drop = lambda text: [line.split("\t")[:6] for line in text.splitlines()]  # images_per_s aside
    assert drop((tmp_path / "whole" / "train_log.tsv").read_text()) == \
        drop((tmp_path / "split" / "train_log.tsv").read_text())


def test_the_params_schema_lists_exactly_the_generator_settings():
    import dataclasses
    from pathlib import Path

    import yaml

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow/schemas/params.schema.yaml").read_text())
    keys = set(schema["$defs"]["generator"]["properties"])
    assert keys == {f.name for f in dataclasses.fields(GeneratorSettings)}
    with pytest.raises(ValueError, match="did you mean 'width'"):
        GeneratorSettings.from_dict({"widht": 8})


def test_var_recipe_fills_what_is_left_null():
    d16, d30 = GeneratorSettings(), GeneratorSettings(depth=30, width=1920, heads=30)
    assert (d16.base_lr, d16.init_adaln_gamma, d16.final_lr_fraction) == (1e-4, 1e-3, 0.1)
    assert d16.drop_path == pytest.approx(0.1 * 16 / 24)
    assert (d30.base_lr, d30.init_adaln_gamma, d30.final_lr_fraction) == (8e-5, 1e-5, 0.01)


def test_a_trained_generator_beats_the_unigram_on_held_out_tokens(tmp_path):
    from coda.generation.evaluate import bits_table

    cfg = settings(max_steps=30, checkpoint_every=100, warmup_epochs=0, class_dropout=0.0, base_lr=0.5)
    model = fit(cfg, model_for(cfg), ToyTokens(), tmp_path).model
    table = bits_table(model, ToyTokens(), ToyTokens(n=12, seed=1))
    assert table["generator_mean"] < table["unigram_mean"] < table["uniform"] == 4.0
    assert len(table["generator"]) == len(SCALES)


def test_duplicate_share_counts_samples_equal_to_a_training_item():
    from coda.generation.evaluate import duplicate_share

    train = ToyTokens(n=6)
    copied = [torch.stack([train[0][0][i], train[4][0][i], (train[1][0][i] + 1) % 16]) for i in range(len(SCALES))]
    assert duplicate_share(copied, train) == pytest.approx(2 / 3)
    coarse = [c.clone() for c in copied]
    coarse[2][2] = (coarse[2][2] + 3) % 16  # only the finest scale of a non-copy changes
    assert duplicate_share(coarse, train, num_scales=2) == pytest.approx(2 / 3)
    coarse[2][0] = (coarse[2][0] + 1) % 16
    assert duplicate_share(coarse, train) == pytest.approx(1 / 3) and duplicate_share(coarse, train, 2) == 2 / 3


RUNNER = '''
import os, sys, torch
from safetensors.torch import save_file
sys.path.insert(0, sys.argv[2])
from test_generation_train import ToyTokens, model_for, settings
from coda.generation.train import fit
cfg = settings(max_steps=3, drop_path=0.2)
run = fit(cfg, model_for(cfg), ToyTokens(), sys.argv[1])
rank = int(os.environ.get("RANK", "0"))  # fit has left the process group by now
save_file({k: v.contiguous() for k, v in run.model.state_dict().items()}, f"{sys.argv[1]}/weights-rank{rank}.safetensors")
'''


def test_two_processes_match_one_process_bit_for_bit(tmp_path):
    """global batch 8: 2 ranks x 4 items vs 1 process x 2 micro-batches of 4 (drop path and class
    dropout seeded per micro-batch), under torchrun with gloo."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    tests = str(Path(__file__).resolve().parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(runner), str(tmp_path / "two"), tests], env=env, capture_output=True, text=True,
                         timeout=600)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    one = subprocess.run([sys.executable, str(runner), str(tmp_path / "one"), tests], env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    rank0, rank1, single = (load_file(tmp_path / d / f"weights-rank{r}.safetensors")
                            for d, r in (("two", 0), ("two", 1), ("one", 0)))
    for name in single:
        assert torch.equal(rank0[name], rank1[name]) and torch.equal(rank0[name], single[name]), name


def test_bf16_autocast_trains(tmp_path):
    cfg = settings(max_steps=3, bf16=True)
    losses = []
    fit(cfg, model_for(cfg), ToyTokens(), tmp_path, on_step=lambda step, v: losses.append(v["loss"]))
    assert len(losses) == 3 and all(0 < loss < 10 for loss in losses)

"""Training checkpoints: the file format, and the policy (the one place that saves, the one that resumes).

The last ``keep`` checkpoints stay in ``checkpoints/step-<step>.safetensors``: a truncated or
unreadable newest one is reported and training resumes from the one before it, so a damaged file
costs at most one checkpoint interval. Nothing is deleted but the checkpoints older than those kept.

The file is one safetensors file, tensors plus a JSON skeleton, replaced atomically. Any nest of
dicts, lists, numbers, strings and tensors round-trips exactly (optimizer state dicts included,
whose integer keys JSON alone would turn into strings). Reading never unpickles.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..files import UnreadableFileError, atomic_path, reading
from .config import RESUMABLE_CHANGES

META_KEY = "coda_checkpoint"


# ---------------------------------------------------------------------------- the file format
def _pack(obj, path: str, tensors: dict):
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _pack(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_pack(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint {path}: {type(obj).__name__}")


def _unpack(obj, tensors: dict):
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict):
        return {k: _unpack(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    return obj


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` durably: a crash at any moment leaves the previous checkpoint or the new one."""
    tensors: dict = {}
    skeleton = _pack(state, "", tensors)
    with atomic_path(path, durable=True) as temporary:
        save_file(tensors, temporary, metadata={META_KEY: json.dumps(skeleton)})
    return Path(path)


def load_checkpoint(path: str | Path) -> dict:
    with reading(path, "coda training checkpoint", "it is skipped for an older one if there is one"):
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if META_KEY not in metadata:
                raise ValueError(f"no '{META_KEY}' metadata")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        return _unpack(json.loads(metadata[META_KEY]), tensors)


def checkpoint_files(directory: Path) -> list[Path]:
    """The checkpoints in ``directory``, newest (highest step) first."""
    return sorted(Path(directory).glob("step-*.safetensors"), reverse=True)


# ---------------------------------------------------------------------------- what a checkpoint holds
def trainable_state(module: nn.Module, like: nn.Module | None = None) -> dict:
    """Trained parameters and all buffers: what a checkpoint must hold (frozen weights reload from
    disk). ``like``: the live model whose trained names apply (the EMA copy trains nothing itself)."""
    like = like or module
    keep = {n for n, p in like.named_parameters() if p.requires_grad} | {n for n, _ in like.named_buffers()}
    return {k: v for k, v in module.state_dict().items() if k in keep}


def load_trainable_state(module: nn.Module, state: dict, what: str, like: nn.Module | None = None) -> None:
    expected = set(trainable_state(module, like))
    if set(state) != expected:
        raise ValueError(f"checkpoint {what} does not match the model: missing "
                         f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}")
    module.load_state_dict(state, strict=False)


# ---------------------------------------------------------------------------- the policy
def save_training_state(directory: Path, keep: int, *, step, experiment, global_batch, tokenizer, ema, disc,
                        opt_g, opt_d) -> Path:
    """The one place that writes a checkpoint; the ``keep`` newest stay, older ones are removed."""
    state = {
        "format": 1, "step": step, "experiment": experiment, "global_batch": global_batch,
        "model": trainable_state(tokenizer), "ema": trainable_state(ema.model, like=tokenizer),
        "opt_g": opt_g.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []},
    }
    if disc is not None:
        state.update(disc=trainable_state(disc), opt_d=opt_d.state_dict())
    path = save_checkpoint(Path(directory) / f"step-{step:08d}.safetensors", state)
    for old in checkpoint_files(directory)[keep:]:
        old.unlink()
    return path


def resume_training_state(directory: Path, info, *, experiment, global_batch, tokenizer, ema, disc, opt_g,
                          opt_d) -> int:
    """The one place that reads a checkpoint back; returns the step to continue from (0: a fresh run).

    The newest readable checkpoint wins; an unreadable one is reported and left in place. A checkpoint
    of other settings (a parameter changed since) is not resumed but kept: rank 0 moves the
    checkpoints to checkpoints/superseded/ and the run starts over.
    """
    files, unreadable = checkpoint_files(directory), []
    for path in files:
        try:
            state = load_checkpoint(path)
            break
        except UnreadableFileError as error:
            unreadable.append(path)
            if info.is_main:
                print(f"train: warning: {error}", file=sys.stderr)
    else:
        if unreadable:
            raise UnreadableFileError(
                f"no readable checkpoint in {directory} ({len(unreadable)} unreadable, kept as they are); to "
                f"start this experiment over, move or delete {directory}")
        return 0
    if changed := changed_settings(state["experiment"], experiment):
        if info.world_size > 1:
            torch.distributed.barrier()  # every rank has read it before rank 0 moves it
        if info.is_main:
            target = Path(directory) / "superseded" / time.strftime("%Y%m%d-%H%M%S")
            target.mkdir(parents=True, exist_ok=True)
            for old in files:
                os.replace(old, target / old.name)
            print(f"train: settings changed since {path} ({', '.join(changed)}); starting over, "
                  f"the old checkpoints are kept in {target}", file=sys.stderr)
        if info.world_size > 1:
            torch.distributed.barrier()
        return 0
    if unreadable and info.is_main:
        print(f"train: resuming from {path}, the newest readable checkpoint", file=sys.stderr)
    if state["global_batch"] != global_batch:
        raise ValueError(f"{path} was written with global batch {state['global_batch']}, this run has "
                         f"{global_batch} (batch_size x grad_accum x processes); keep it equal to resume")
    load_trainable_state(tokenizer, state["model"], "model")
    load_trainable_state(ema.model, state["ema"], "ema", like=tokenizer)
    opt_g.load_state_dict(state["opt_g"])
    if disc is not None:
        load_trainable_state(disc, state["disc"], "discriminator")
        opt_d.load_state_dict(state["opt_d"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"])


def changed_settings(saved: dict, current: dict) -> list[str]:
    """Settings that differ between a checkpoint's run and this one (bookkeeping and speed flags aside)."""
    def flat(experiment):
        values = {k: v for k, v in experiment.items() if k != "train"}
        values.update({f"train.{k}": v for k, v in experiment.get("train", {}).items() if k not in RESUMABLE_CHANGES})
        return values

    old, new = flat(saved), flat(current)
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))

"""Training checkpoints: one safetensors file, tensors plus a JSON skeleton, replaced atomically.

Any nest of dicts, lists, numbers, strings and tensors round-trips exactly (optimizer state
dicts included, whose integer keys JSON alone would turn into strings). Reading never unpickles.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

META_KEY = "coda_checkpoint"


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
    """Write ``state`` to ``path`` through a temporary file and ``os.replace``: a crash at any
    moment leaves either the previous checkpoint or the new one, never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict = {}
    skeleton = _pack(state, "", tensors)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp, metadata={META_KEY: json.dumps(skeleton)})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if META_KEY not in metadata:
            raise ValueError(f"{path} is not a coda training checkpoint (no '{META_KEY}' metadata)")
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    return _unpack(json.loads(metadata[META_KEY]), tensors)

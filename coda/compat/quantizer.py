"""Loading the authors' released quantizer (``quantizer_ema.pth``) into CodaQuantizer."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from coda.quantizers import CodaQuantizer

from .ldm import check_layout

# The released quantizers, in the keys of tests/data/compat/golden_quantizer_mar16.json:
# V = 16384 on the f16 MAR latent, V = 65536 on the f8 FLUX latent.
_DEFAULTS = {"norm": "rms_norm", "rms_eps": 1e-5, "beta": 0.05, "entropy_temperature": 0.01}
CODA_F16_QUANTIZER_SETTINGS = {"codebook_size": 16384, "code_dim": 16, "attn_dim": 32,
                               "scales": [1, 2, 3, 4, 5, 6, 8, 10, 13, 16], **_DEFAULTS}
CODA_F8_QUANTIZER_SETTINGS = {"codebook_size": 65536, "code_dim": 16, "attn_dim": 32,
                              "scales": [1, 2, 3, 4, 6, 9, 13, 18, 24, 32], **_DEFAULTS}
_REQUIRED = ("codebook_size", "code_dim", "attn_dim", "scales")


def _build(settings: Mapping) -> CodaQuantizer:
    missing = [key for key in _REQUIRED if key not in settings]
    if missing:
        raise KeyError(f"quantizer settings lack {missing}; required: {list(_REQUIRED)}")
    merged = {**_DEFAULTS, **settings}
    if merged["norm"] != "rms_norm":
        raise ValueError(f"quantizer setting norm={merged['norm']!r} is not supported; allowed: 'rms_norm'")
    return CodaQuantizer(codebook_size=merged["codebook_size"], dim=merged["code_dim"], attn_dim=merged["attn_dim"],
                         scales=tuple(merged["scales"]), beta=merged["beta"],
                         entropy_temperature=merged["entropy_temperature"], rms_eps=merged["rms_eps"])


def load_official_quantizer(state_dict: Mapping[str, torch.Tensor], settings: Mapping) -> CodaQuantizer:
    """CodaQuantizer with the released weights; settings use the golden .json keys (others ignored)."""
    quantizer = _build(settings)
    check_layout(state_dict, {k: tuple(v.shape) for k, v in quantizer.state_dict().items()}, "released CODA quantizer")
    quantizer.load_state_dict(dict(state_dict), strict=True)
    return quantizer


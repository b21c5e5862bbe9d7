"""VAR's transformer state dict (FoundationVision/VAR ``models/var.py``, commit 78b9539) under the
names of ``coda.generation.NextScaleGenerator``.

VAR's constant buffers (``lvl_1L``, ``attn_bias_for_masking``, ``blocks.*.attn.zero_k_bias``) are
rebuilt by the generator and dropped here. VAR's quantizer (codebook and Phi convolutions) is not a
part of the transformer: the generator's inputs come from the CODA tokenizer's value table.
"""
from __future__ import annotations

import re

from torch import Tensor

VAR_BUFFERS = re.compile(r"^(lvl_1L|attn_bias_for_masking|blocks\.\d+\.attn\.zero_k_bias)$")
# (VAR's name pattern, the generator's); the first that matches applies.
VAR_RENAMES = [
    (r"^pos_1LC$", "pos_scales"),
    (r"^lvl_embed\.", "level_emb."),
    (r"^blocks\.(\d+)\.attn\.mat_qkv\.", r"blocks.\1.attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.scale_mul_1H11$", r"blocks.\1.attn.log_scale"),
    (r"^blocks\.(\d+)\.ada_lin\.1\.", r"blocks.\1.ada."),
    (r"^head_nm\.ada_lin\.1\.", "head_norm.ada."),
]


def generator_state_from_var(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a VAR state dict (transformer only) to the generator's parameter names."""
    out = {}
    for name, tensor in state.items():
        if VAR_BUFFERS.match(name):
            continue
        for pattern, replacement in VAR_RENAMES:
            if re.match(pattern, name):
                name = re.sub(pattern, replacement, name)
                break
        out[name] = tensor
    return out

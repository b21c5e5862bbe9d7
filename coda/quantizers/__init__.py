"""Quantizers with one contract (docs/interfaces.md): CODA, multi-scale residual VQ, plain VQ."""

from .coda import CodaQuantizer
from .multiscale import QuantizerOutput
from .rvq import ResidualVQ
from .vq import VectorQuantizer

QUANTIZER_KINDS = {"coda": CodaQuantizer, "rvq": ResidualVQ, "vq": VectorQuantizer}

__all__ = ["QuantizerOutput", "CodaQuantizer", "ResidualVQ", "VectorQuantizer", "build_quantizer", "QUANTIZER_KINDS"]


def build_quantizer(kind: str, **kwargs):
    """Build a quantizer from its `config` dict: build_quantizer(**quantizer.config)."""
    if kind not in QUANTIZER_KINDS:
        raise ValueError(f"unknown quantizer kind {kind!r}; allowed: {sorted(QUANTIZER_KINDS)}")
    return QUANTIZER_KINDS[kind](**kwargs)

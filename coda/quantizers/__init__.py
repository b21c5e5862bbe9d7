"""Quantizers with one contract (docs/interfaces.md): CODA, multi-scale residual VQ, plain VQ."""

from .coda import CodaQuantizer
from .multiscale import QuantizerOutput
from .rvq import ResidualVQ
from .vq import VectorQuantizer

QUANTIZER_KINDS = {"coda": CodaQuantizer, "rvq": ResidualVQ, "vq": VectorQuantizer}

__all__ = ["QuantizerOutput", "CodaQuantizer", "ResidualVQ", "VectorQuantizer", "build_quantizer", "QUANTIZER_KINDS"]


def build_quantizer(kind: str, **settings):
    """A quantizer from its ``config`` (``build_quantizer(**quantizer.config)``) or from an
    experiment's ``quantizer`` block plus ``dim``; each kind takes the settings that apply to it."""
    if kind not in QUANTIZER_KINDS:
        raise ValueError(f"unknown quantizer kind {kind!r}; allowed: {sorted(QUANTIZER_KINDS)}")
    return QUANTIZER_KINDS[kind].from_settings(**settings)

"""Class-conditional next-scale generation on CODA tokens (VAR's design): the transformer blocks
(``blocks``), the model and its inputs from the tokenizer's value table (``model``), the KV-cached
sampler (``sampler``), the trainer (``train``) and the ``coda train-generator`` / ``coda sample``
command bodies (``commands``)."""

from .model import CodeValueInputs, NextScaleGenerator
from .sampler import SamplingSettings, generate

__all__ = ["CodeValueInputs", "NextScaleGenerator", "SamplingSettings", "generate"]

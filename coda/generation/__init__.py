"""Class-conditional next-scale generation on CODA tokens (VAR's design): the transformer blocks
(``blocks``), the model and its inputs from the tokenizer's value table (``model``), the KV-cached
sampler (``sampler``), the trainer (``train``) and the ``coda train-generator`` / ``coda sample``
command bodies (``commands``). Imported lazily, so the CLI's argument parsing stays light."""

_EXPORTS = {"CodeValueInputs": "model", "NextScaleGenerator": "model", "SamplingSettings": "sampler",
            "generate": "sampler"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

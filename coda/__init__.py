"""coda: CODA discrete tokenizers from continuous VAEs (ICCV 2025), reproduced."""
__version__ = "0.1.0"

# Imported lazily so that `coda --help` and the pipeline's thin stages start fast.
_EXPORTS = {"Tokenizer": "coda.tokenizer", "ContinuousVAE": "coda.vae", "build_quantizer": "coda.quantizers",
            "add_lora": "coda.lora"}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'coda' has no attribute {name!r}")


__all__ = ["__version__", *_EXPORTS]

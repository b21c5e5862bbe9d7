"""Layouts of the authors' released checkpoints, and loaders that map them onto this package."""

from .io import read_state_dict
from .quantizer import CODA_F8_QUANTIZER_SETTINGS, CODA_F16_QUANTIZER_SETTINGS, load_official_quantizer
from .vae import CODA_FLUX8_SETTINGS, CODA_MAR16_SETTINGS, FLUX_VAE, load_mar_vae, load_official_vae

# Settings of the two released tokenizers, by variant (Tokenizer.from_official).
OFFICIAL_SETTINGS = {
    "f16": {"vae": CODA_MAR16_SETTINGS, "quantizer": CODA_F16_QUANTIZER_SETTINGS},
    "f8": {"vae": CODA_FLUX8_SETTINGS, "quantizer": CODA_F8_QUANTIZER_SETTINGS},
}

__all__ = ["FLUX_VAE", "OFFICIAL_SETTINGS", "load_mar_vae", "load_official_quantizer", "load_official_vae",
           "read_state_dict"]

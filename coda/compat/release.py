"""The authors' release: the hub repository, the file names of its two tokenizers, and their settings
(``Tokenizer.from_official``, the ``released`` experiment, and what ``coda fetch`` downloads)."""

from __future__ import annotations

from .quantizer import CODA_F8_QUANTIZER_SETTINGS, CODA_F16_QUANTIZER_SETTINGS
from .vae import CODA_FLUX8_SETTINGS, CODA_MAR16_SETTINGS

RELEASED_REPO = "shuidi0020/CODA"
# Per variant, the EMA weights the authors' training script saves.
RELEASED_FILES = {"f16": ("mar_v16384/vae_ema.pth", "mar_v16384/quantizer_ema.pth"),
                  "f8": ("flux_v65536/vae_ema.pth", "flux_v65536/quantizer_ema.pth")}
OFFICIAL_SETTINGS = {
    "f16": {"vae": CODA_MAR16_SETTINGS, "quantizer": CODA_F16_QUANTIZER_SETTINGS},
    "f8": {"vae": CODA_FLUX8_SETTINGS, "quantizer": CODA_F8_QUANTIZER_SETTINGS},
}


def released_files(config: dict) -> tuple[str, str]:
    """``vae_file`` and ``quantizer_file`` of a released experiment: given, or the variant's release names."""
    default = RELEASED_FILES[config.get("variant", "f16")]
    return config.get("vae_file", default[0]), config.get("quantizer_file", default[1])

"""Layouts of the authors' released checkpoints, and loaders that map them onto this package:
``vae`` (MAR's kl16, the released VAEs, the FLUX VAE config), ``quantizer`` (the released quantizer),
``release`` (the hub repository, file names and settings of the released tokenizers), ``ldm`` and
``io``. Nothing is imported here, so loading a VAE does not import the quantizers."""

"""Training: ``coda.train.stage.train(experiment, vae_dir, out_dir, images=... | latents=...)`` is the
API; the command line is ``coda train`` (``torchrun --nproc_per_node N -m coda train ...`` for data
parallel). Nothing is imported here."""

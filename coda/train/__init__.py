"""Training: ``coda.train.stage.train(experiment, vae_dir, out_dir, images=... | latents=...)`` is the
API; the command line is ``coda train`` (data-parallel on ``train.processes`` ranks it starts
itself, ``coda.train.launch``). Nothing is imported here."""

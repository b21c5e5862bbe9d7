"""The names of the files and folders a stage writes and another stage, the CLI, the report or the
tests read: one table, so each name is spelled once. Where a stage's output folder lies
(``work/<scale>/...``) is the engines' (dvc.yaml, the Snakefile); inside it, these names.
"""

# prepare: the prepared data folder (its format: coda/data/layout.py)
META = "meta.json"
TRAIN_NPY = "train.npy"                # demo scale: the training crops themselves
TRAIN_MANIFEST = "train_manifest.tsv"  # paper scale: training files, decoded at train time
TRAIN_FILES = "train_files.tsv"
VAL_NPY = "val.npy"                    # the preprocessed uint8 validation images every evaluation reads
VAL_FILES = "val_files.tsv"
PREPARE_REPORT = "prepare_report.json"

# vae: per VAE of the scale; pretrain-vae: the shipped VAE's record
VAE_DIR = "vae"                        # a diffusers AutoencoderKL folder
VAE_INFO = "vae_info.json"             # where it came from, its hash and latent normalisation
PROVENANCE = "provenance.json"

# cache and tokenize: sharded, resumable
MANIFEST = "manifest.json"             # written last: the stage is complete

# train: per experiment
TOKENIZER_DIR = "tokenizer"            # the EMA tokenizer
TOKENIZER_LIVE_DIR = "tokenizer_live"  # with train.save_live: the live weights
TRAIN_LOG = "train_log.tsv"
RUN_RECORD = "run.json"
CHECKPOINTS = "checkpoints"
NO_ROW = "not_at_this_scale.json"      # an experiment this scale has no VAE for (train and evaluate)

# a tokenizer folder (Tokenizer.save_pretrained)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"

# reference
REFERENCE_FILE = "reference.safetensors"

# evaluate: per experiment, and per VAE of the scale (the ceiling rows)
METRICS_FILE = "metrics.json"
SAMPLES_FILE = "recon_samples.npy"     # the first reconstructions, for the report's figure
COUNTS_FILE = "code_counts.npy"        # the code histogram, for the report's usage figure
NPZ_FILE = "reconstructions.npz"       # all reconstructions, ADM's format (evaluate.export_npz)

# report: into results/
TABLE1 = "table1.csv"
ABLATION = "ablation.csv"
FIGURE_NAMES = {"grid": "reconstructions.png", "usage": "code_usage.png", "curves": "training_curves.png",
                "rate_distortion": "rate_distortion.png"}

"""`python -m coda.evaluation`: the evaluate stage, one tokenizer (or the continuous VAE) per call."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m coda.evaluation", description=__doc__)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--tokenizer", type=Path, help="tokenizer directory (Tokenizer.save_pretrained)")
    which.add_argument("--vae", type=Path, help="continuous VAE directory: evaluate the VAE itself (ceiling row)")
    parser.add_argument("--val", type=Path, required=True, help="preprocessed validation set, N x H x W x 3 uint8 .npy")
    parser.add_argument("--out", type=Path, required=True, help="metrics JSON, e.g. results/metrics/coda.json")
    parser.add_argument("--experiment", help="experiment name (default: the JSON file's stem)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--posterior", choices=("sample", "mean"),
                        help="default: the tokenizer's own setting; 'sample' for the VAE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inception-weights", type=Path,
                        help="Inception-v3 weights (torch-fidelity format); default: torch-fidelity's cache, "
                             "else rFID is reported missing")
    parser.add_argument("--recon-samples", type=Path, help="write the first reconstructions here (.npy)")
    parser.add_argument("--num-recon-samples", type=int, default=8)
    parser.add_argument("--code-counts", type=Path, help="write the exact code histograms here (.npy)")
    parser.add_argument("--dataset", help="dataset name for the protocol record")
    parser.add_argument("--crop", help="crop of the validation set (center | adm)")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                        help="whether the tokenizer weights are the EMA ones")
    parser.add_argument("--vae-name", help="VAE label for the tables")
    parser.add_argument("--method", help="method label for the tables")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--max-images", type=int, help="evaluate only the first N images (smoke runs)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # evaluation never downloads anything
    from coda.tokenizer import Tokenizer
    from coda.vae import ContinuousVAE

    from .evaluate import evaluate_tokenizer

    tokenizer = Tokenizer.from_pretrained(args.tokenizer) if args.tokenizer else None
    vae = ContinuousVAE.from_pretrained(args.vae) if args.vae else None
    meta = {"experiment": args.experiment or args.out.stem, "dataset": args.dataset, "crop": args.crop,
            "ema": args.ema, "vae": args.vae_name, "method": args.method,
            "checkpoint": args.tokenizer or args.vae}
    results = evaluate_tokenizer(
        tokenizer, vae, args.val, args.out, batch_size=args.batch_size, inception_weights=args.inception_weights,
        posterior=args.posterior, seed=args.seed, recon_samples_out=args.recon_samples,
        num_recon_samples=args.num_recon_samples, code_counts_out=args.code_counts, meta=meta,
        device=args.device, max_images=args.max_images)
    shown = {k: results[k] for k in ("rfid", "rfd_vgg16", "psnr", "ssim", "lpips_vgg", "codebook_utilization")}
    print(json.dumps({"experiment": meta["experiment"], **shown}))
    return results

"""The bodies of ``coda train-generator`` and ``coda sample`` (``coda/cli.py`` routes to them).

Both refuse, before any computation, what does not belong together: token files and a tokenizer
of different hashes, a generator and the tokenizer asked to decode its samples, an unknown class.
Each ends with one message (``GenerationInputError``, exit status 2), never a traceback.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import UserError

SAMPLES_NPZ = "samples.npz"
SAMPLE_TOKENS = "tokens.safetensors"
SAMPLE_RECORD = "samples.json"
SAMPLE_TOKENS_FORMAT = "coda-sample-tokens/1"


class GenerationInputError(UserError, ValueError):
    """Inputs that do not fit together (another tokenizer's tokens, an unknown class): the user's to fix."""


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens", required=True, help="token directory of the tokenize stage (with class labels)")
    p.add_argument("--tokenizer", required=True, help="the tokenizer directory that wrote the tokens")
    p.add_argument("--out", required=True, help="run directory: generator/, checkpoints/, train_log.tsv, run.json")


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    from .sampler import SamplingSettings

    d = SamplingSettings()
    p.add_argument("--generator", required=True, help="generator directory (train-generator's generator/) or hub id")
    p.add_argument("--tokenizer", required=True, help="the tokenizer the generator was trained on (decodes)")
    p.add_argument("--out", required=True, help="output directory: images/*.png, tokens.safetensors, samples.npz")
    p.add_argument("--classes", nargs="+", help="class names or indices (default: every class)")
    p.add_argument("--per-class", type=int, default=4, help="samples per class (default: 4; ADM's protocol: 50)")
    p.add_argument("--cfg", type=float, default=d.cfg, help=f"guidance at the last scale, ramped from 0 (default {d.cfg})")
    p.add_argument("--top-k", type=int, default=d.top_k, help=f"0: off (default {d.top_k})")
    p.add_argument("--top-p", type=float, default=d.top_p, help=f"0: off (default {d.top_p})")
    p.add_argument("--temperature", type=float, default=d.temperature, help=f"logits divided by it (default {d.temperature})")
    p.add_argument("--seed", type=int, default=0, help="with the same --batch-size, the same samples")
    p.add_argument("--batch-size", type=int, default=32, help="images per sampling batch (default 32)")
    p.add_argument("--no-png", action="store_true", help="write only the tokens and the npz")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")


def check_same_tokenizer(expected: str | None, tokenizer_dir, what: str) -> "object":
    """The tokenizer of ``tokenizer_dir`` (loaded), refused unless its hash is ``expected``."""
    from ..tokenizer import Tokenizer, tokenizer_sha256

    directory = Path(tokenizer_dir)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"tokenizer not found: {directory} holds no config.json; give the tokenizer "
                                f"directory {what} was made with (sha256 {str(expected)[:12]})")
    tokenizer = Tokenizer.from_pretrained(directory)
    sha = tokenizer_sha256(tokenizer, directory)
    if expected != sha:
        raise GenerationInputError(f"{what} belongs to another tokenizer (sha256 {str(expected)[:12]}) than "
                                   f"{directory} (sha256 {sha[:12]}); give the tokenizer it was made with")
    return tokenizer, sha


def train_generator(args, params) -> None:
    from ..config import ParamsError, scale_block
    from ..token_files import TokenDataset, read_token_manifest
    from .train import GeneratorSettings, build_generator, fit

    try:
        settings = GeneratorSettings.from_dict(scale_block(params).get("generator"))
    except ValueError as error:
        raise ParamsError(f"scales.{params['scale']}.generator: {error}") from error
    manifest = read_token_manifest(args.tokens)
    if manifest.get("classes") is None:
        raise GenerationInputError(f"{args.tokens} holds tokens without class labels (written before labels "
                                   f"existed): rerun the tokenize stage (`coda tokenize`)")
    if settings.flipped and not manifest["flip"]:
        raise ParamsError(f"scales.{params['scale']}.generator.flipped is true but {args.tokens} has no flipped "
                          f"copies: set tokenize.flip: true (and rerun tokenize) or generator.flipped: false")
    tokenizer, sha = check_same_tokenizer(manifest["tokenizer_sha256"], args.tokenizer, f"the token files {args.tokens}")
    dataset = TokenDataset(args.tokens, "train", flipped=settings.flipped)
    model = build_generator(settings, num_classes=len(manifest["classes"]), scales=manifest["scales"],
                            code_values=tokenizer.quantizer.code_values().detach(), tokenizer_sha256=sha,
                            class_names=list(manifest["classes"]))
    run = fit(settings, model, dataset, args.out, record={"tokens": str(args.tokens), "tokenizer": str(args.tokenizer),
                                                          "items": len(dataset), "classes": len(manifest["classes"])})
    print(f"generator trained for {run.step} steps: {Path(args.out) / 'generator'}")


def sample(args) -> None:
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    from ..pixels import to_uint8
    from ..files import atomic_path, library_versions, write_json
    from ..image_files import save_png
    from ..token_files import index_dtype
    from .model import NextScaleGenerator
    from .sampler import SamplingSettings, generate

    if args.per_class < 1 or args.batch_size < 1:
        raise GenerationInputError("--per-class and --batch-size must be at least 1")
    generator_path = Path(args.generator)
    model = NextScaleGenerator.from_pretrained(args.generator)
    try:
        classes = [model.class_index(c) for c in (args.classes or range(model.num_classes))]
    except ValueError as error:
        raise GenerationInputError(str(error)) from error
    tokenizer, sha = check_same_tokenizer(model.tokenizer_sha256, args.tokenizer, f"the generator {generator_path}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = model.to(device).eval(), tokenizer.to(device).eval()
    settings = SamplingSettings(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature)
    labels = torch.tensor([c for c in classes for _ in range(args.per_class)], device=device)
    rng = torch.Generator(device).manual_seed(args.seed)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    tokens, images = [], []
    t0 = time.perf_counter()
    for begin in range(0, len(labels), args.batch_size):
        batch = generate(model, labels[begin:begin + args.batch_size], settings, rng)
        tokens.append([t.cpu() for t in batch])
        images.append(to_uint8(tokenizer.decode(batch)).permute(0, 2, 3, 1).cpu().numpy())
    seconds = time.perf_counter() - t0
    arr = np.concatenate(images)
    levels = [torch.cat([b[i] for b in tokens]).numpy().astype(index_dtype(model.codebook_size))
              for i in range(len(model.scales))]
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    label_array = labels.cpu().numpy().astype(np.int64)
    if not args.no_png:
        for i, (image, label) in enumerate(zip(arr, label_array)):
            save_png(out / "images" / f"{i:05d}_{label}.png", image)
    with atomic_path(out / SAMPLE_TOKENS) as tmp:
        save_file({**{f"scale_{i}": lv for i, lv in enumerate(levels)}, "labels": label_array}, str(tmp),
                  metadata={"format": SAMPLE_TOKENS_FORMAT, "tokenizer_sha256": sha})
    with atomic_path(out / SAMPLES_NPZ) as tmp:  # ADM's sample-file convention
        with open(tmp, "wb") as fh:
            np.savez(fh, arr_0=arr, arr_1=label_array)
    record = {"generator": str(args.generator), "tokenizer": str(args.tokenizer), "tokenizer_sha256": sha,
              "classes": [names[c] for c in classes], "per_class": args.per_class, "count": len(arr),
              "seed": args.seed, "batch_size": args.batch_size, "sampling": settings.record(),
              "uint8_rule": "round((x + 1) * 127.5), clamped to [0, 255] (coda.pixels.to_uint8)",
              "device": device, "seconds": seconds, "images_per_s": len(arr) / seconds,
              "versions": library_versions()}
    write_json(out / SAMPLE_RECORD, record)
    print(f"coda sample: {len(arr)} images of {len(classes)} classes in {seconds:.1f} s "
          f"({len(arr) / seconds:.2f} images/s, KV cache, {device}) -> {out}")

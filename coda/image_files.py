"""Your own image files through a trained tokenizer: `coda reconstruct`, `coda encode`, `coda decode`.

Images are read like the prepare stage reads them (``coda.data.images.open_rgb``: CMYK, grey,
16-bit, alpha and EXIF orientation converted; a bad file is recorded with its reason and skipped)
and brought to the tokenizer's square by a policy of ``coda.data.framing`` (``resize-crop`` or
``pad``, whose padding is removed after decoding).

Token files are safetensors with one uint16 (uint32 above 65536 codes) tensor ``scale_<i>`` of
s x s indices per scale and string metadata (``TOKEN_METADATA``): the tokenizer's hash, the
original size, the policy and the padding, so ``decode`` restores the framing and refuses tokens of
another tokenizer. One image at a time, each with a generator seeded by ``seed``: the tokens of an
image do not depend on the other files, and decode(encode(x)) equals reconstruct(x) bit for bit.

Each command writes ``<command>_report.json`` into ``out`` (the ``prepare_report.json`` format of
``coda.data.bad_images``, plus one record per written file) and prints a summary; it ends with
UnreadableFileError (exit status 2) only when no input could be used.
"""
from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from .data.bad_images import BadImage, reporting
from .data.framing import Framing, fit_to_square
from .data.images import is_image_name, list_files, open_rgb
from .devices import pick_device
from .evaluation.metrics import psnr_uint8
from .files import UnreadableFileError, atomic_path, reading
from .pixels import array_to_tensor, to_uint8
from .tokenizer import Tokenizer, tokenizer_sha256
from .token_files import index_dtype

TOKEN_SUFFIX = ".safetensors"
TOKEN_FORMAT = "coda-tokens/1"
TOKEN_METADATA = ("format", "tokenizer_sha256", "source", "original_size", "policy", "padding",
                  "resolution", "posterior", "seed")


def load_tokenizer(directory, device: str | None, posterior: str | None = None) -> tuple[Tokenizer, str, str]:
    """(tokenizer on ``device``, its hash, the device); ``posterior`` overrides the saved one."""
    directory = Path(directory)
    tokenizer = Tokenizer.from_pretrained(directory)
    if posterior is not None:
        tokenizer.posterior = posterior
    device = str(pick_device(device))
    return tokenizer.to(device), tokenizer_sha256(tokenizer, directory), device


def gather(inputs, wanted, suffix: str, what: str) -> tuple[list[tuple[Path, PurePosixPath]], list[Path]]:
    """(file, output name) for each file named in ``inputs`` and each ``wanted`` file in a folder
    of ``inputs`` (its path below the folder, with ``suffix``); and the folders' other files."""
    pairs, ignored = [], []
    for given in map(Path, inputs):
        if given.is_dir():
            images, others = list_files(given)
            files = [p for p in images + others if wanted(p)]
            ignored += [p for p in images + others if not wanted(p)]
            pairs += [(p, PurePosixPath(p.relative_to(given).as_posix()).with_suffix(suffix)) for p in files]
        else:  # a named file is always a candidate: a missing or wrong one is reported, not ignored
            pairs.append((given, PurePosixPath(given.name).with_suffix(suffix)))
    if not pairs:
        raise FileNotFoundError(f"no {what} found in {', '.join(map(str, inputs))} "
                                f"({len(ignored)} other file(s) ignored)")
    return pairs, ignored


def _first_of_each_name(pairs, report):
    """The pairs whose output name is still free; a later file with a taken name (x.jpg beside x.png)
    is recorded as ``unsupported_name``, never written over the first one's output."""
    seen: dict[PurePosixPath, Path] = {}
    for path, name in pairs:
        if name in seen:
            report.add_bad(path, "unsupported_name", f"its output {name} is {seen[name]}'s; rename one, "
                                                     f"or run it with another --out")
            continue
        seen[name] = path
        yield path, name


def _generator(seed: int, device: str) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


def _unit_batch(image: np.ndarray, device: str) -> torch.Tensor:
    return array_to_tensor(np.array(image))[None].to(device)  # a copy: PIL's arrays are read-only


def _as_image(output: torch.Tensor) -> np.ndarray:
    """1 x 3 x H x W in [-1, 1] -> uint8 H x W x 3, rounded as every saved reconstruction is."""
    return to_uint8(output)[0].permute(1, 2, 0).cpu().numpy()


def save_png(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as temporary:
        Image.fromarray(np.ascontiguousarray(image)).save(temporary, format="PNG")


def save_tokens(path: Path, indices: list[torch.Tensor], codebook_size: int, metadata: dict) -> None:
    dtype = index_dtype(codebook_size)
    tensors = {f"scale_{i}": level[0].cpu().numpy().astype(dtype) for i, level in enumerate(indices)}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata={key: json.dumps(metadata[key]) for key in TOKEN_METADATA})


def read_tokens(path: Path) -> tuple[list[np.ndarray], dict]:
    """(one s x s index array per scale, the metadata), or UnreadableFileError naming ``path``."""
    with reading(path, "coda token file", "make it again with `coda encode`"), \
            safe_open(str(path), framework="numpy") as f:
        raw = f.metadata() or {}
        if json.loads(raw.get("format", "null")) != TOKEN_FORMAT:
            raise ValueError(f"no {TOKEN_FORMAT!r} metadata")
        metadata = {key: json.loads(raw[key]) for key in TOKEN_METADATA}
        levels = [f.get_tensor(f"scale_{i}") for i in range(len(f.keys()))]
    return levels, metadata


def _summary(command: str, report, out: Path, report_path: Path, what: str) -> None:
    skipped = f"; skipped {report.skipped} ({report.by_reason})" if report.skipped else ""
    print(f"coda {command}: {report.ok} of {report.ok + report.skipped} {what} written to {out}{skipped}; "
          f"report {report_path}")
    if report.ok == 0:
        raise UnreadableFileError(f"none of the {report.skipped} {what} could be made: {_why(report)}; "
                                  f"every file's reason is in {report_path}")


# What to do about the files of one reason, where the reason alone does not say it.
REMEDIES = {"other_tokenizer": "decode them with the tokenizer that encoded them (--tokenizer)",
            "other_scales": "decode them with the tokenizer that encoded them (--tokenizer)"}


def _why(report) -> str:
    """The reason on the terminal: the one file's, or the first file's of each reason (with its count)."""
    parts = []
    for reason, count in report.by_reason.items():
        first = next(bad for bad in report.bad if bad["reason"] == reason)
        detail = f"{first['path']}: {first['detail'] or reason.replace('_', ' ')}"
        parts.append(detail if report.skipped == 1 else f"{count} {reason.replace('_', ' ')} (first {detail})")
        if reason in REMEDIES:
            parts[-1] += f"; {REMEDIES[reason]}"
    return "; ".join(parts)


def _images(command: str, inputs, out: Path, suffix: str, records: list, resolution: int, policy: str, **extra):
    """Yield (report, output name, source path, fitted image, framing) for each readable image of
    ``inputs``; bad files go to the report, written to ``out/<command>_report.json`` at the end."""
    pairs, ignored = gather(inputs, is_image_name, suffix, "image files")
    report_path = out / f"{command}_report.json"
    with reporting(report_path, "skip", {"images": None}, resolution=resolution, fit_policy=policy, **extra,
                   written=records) as reports:
        report = reports["images"]
        for path in ignored:
            report.add_ignored(path)
        for path, name in tqdm(list(_first_of_each_name(pairs, report)), desc=f"coda {command}", unit="image",
                               disable=len(pairs) < 2):
            try:
                img, converted = open_rgb(path)
            except BadImage as bad:
                report.add_bad(bad.path, bad.reason, bad.detail)
                continue
            fitted, framing = fit_to_square(img, resolution, policy)
            yield name, path, fitted, framing
            report.add_ok(converted)
        _summary(command, report, out, report_path, "images" if command == "reconstruct" else "token files")


def reconstruct(inputs, tokenizer_dir, out, policy: str = "resize-crop", posterior: str | None = None,
                seed: int = 0, sheet: bool = False, device: str | None = None) -> None:
    """Each image -> ``out/<name>.png`` (and, with ``sheet``, ``out/sheets/<name>.png``: input | output)."""
    out = Path(out)
    tokenizer, sha, device = load_tokenizer(tokenizer_dir, device, posterior)
    records: list[dict] = []
    for name, path, fitted, framing in _images(
            "reconstruct", inputs, out, ".png", records, tokenizer=str(tokenizer_dir), tokenizer_sha256=sha,
            resolution=tokenizer.resolution, policy=policy, posterior=tokenizer.posterior, seed=seed):
        output = _as_image(tokenizer.reconstruct(_unit_batch(fitted, device), _generator(seed, device)))
        picture, reconstruction = framing.unframe(fitted), framing.unframe(output)
        save_png(out / name, reconstruction)
        if sheet:
            save_png(out / "sheets" / name, np.concatenate([picture, reconstruction], axis=1))
        psnr = psnr_uint8(*(torch.from_numpy(np.array(a)).permute(2, 0, 1)[None]
                            for a in (picture, reconstruction)))
        records.append({"source": str(path), "output": str(name), "original_size": list(framing.original_size),
                        "padding": list(framing.padding), "psnr_db": round(float(psnr[0]), 3)})


def encode(inputs, tokenizer_dir, out, policy: str = "resize-crop", posterior: str | None = None,
           seed: int = 0, device: str | None = None) -> None:
    """Each image -> ``out/<name>.safetensors``, the token file ``decode`` reads."""
    out = Path(out)
    tokenizer, sha, device = load_tokenizer(tokenizer_dir, device, posterior)
    records: list[dict] = []
    for name, path, fitted, framing in _images(
            "encode", inputs, out, TOKEN_SUFFIX, records, tokenizer=str(tokenizer_dir), tokenizer_sha256=sha,
            resolution=tokenizer.resolution, policy=policy, posterior=tokenizer.posterior, seed=seed):
        indices = tokenizer.encode(_unit_batch(fitted, device), _generator(seed, device))
        save_tokens(out / name, indices, tokenizer.quantizer.codebook_size, {
            "format": TOKEN_FORMAT, "tokenizer_sha256": sha, "source": path.name,
            "original_size": list(framing.original_size), "policy": policy, "padding": list(framing.padding),
            "resolution": tokenizer.resolution, "posterior": tokenizer.posterior, "seed": seed})
        records.append({"source": str(path), "output": str(name), "original_size": list(framing.original_size),
                        "padding": list(framing.padding)})


def decode(inputs, tokenizer_dir, out, device: str | None = None) -> None:
    """Each token file -> ``out/<name>.png`` in the framing it was encoded with. A file that is not a
    token file (reason ``unreadable``) or was made by another tokenizer (``other_tokenizer``) or with
    other scales (``other_scales``) is recorded and skipped."""
    out = Path(out)
    tokenizer, sha, device = load_tokenizer(tokenizer_dir, device)
    scales, codebook_size = list(tokenizer.quantizer.scales), tokenizer.quantizer.codebook_size
    pairs, ignored = gather(inputs, lambda p: p.name.endswith(TOKEN_SUFFIX), ".png", "token files")
    report_path = out / "decode_report.json"
    records: list[dict] = []
    with reporting(report_path, "skip", {"tokens": None}, tokenizer=str(tokenizer_dir), tokenizer_sha256=sha,
                   written=records) as reports:
        report = reports["tokens"]
        for path in ignored:
            report.add_ignored(path)
        for path, name in tqdm(list(_first_of_each_name(pairs, report)), desc="coda decode", unit="file",
                               disable=len(pairs) < 2):
            if not path.is_file():
                report.add_bad(path, "missing" if not path.exists() else "not_a_file")
                continue
            try:
                levels, metadata = read_tokens(path)
            except UnreadableFileError as error:
                report.add_bad(path, "unreadable", str(error))
                continue
            if metadata["tokenizer_sha256"] != sha:
                report.add_bad(path, "other_tokenizer", f"made by tokenizer {metadata['tokenizer_sha256'][:12]}, "
                                                        f"not {sha[:12]} ({tokenizer_dir})")
                continue
            if [level.shape for level in levels] != [(s, s) for s in scales] or \
                    any(int(level.max()) >= codebook_size for level in levels):
                report.add_bad(path, "other_scales", f"expected scales {scales} of indices below {codebook_size}")
                continue
            indices = [torch.from_numpy(level.astype(np.int64))[None].to(device) for level in levels]
            framing = Framing(metadata["policy"], tuple(metadata["original_size"]), tuple(metadata["padding"]))
            save_png(out / name, framing.unframe(_as_image(tokenizer.decode(indices))))
            report.add_ok()
            records.append({"source": str(path), "output": str(name), "original_size": metadata["original_size"],
                            "padding": metadata["padding"]})
        _summary("decode", report, out, report_path, "images")

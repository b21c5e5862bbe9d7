"""Reading image files into RGB, and finding them in a folder.

One job: turn a path into a fully decoded 8-bit RGB ``PIL.Image`` or a ``BadImage`` with a short
reason code. Everything that can be converted is converted (CMYK, greyscale, 16-bit, palette,
alpha, EXIF orientation); everything else becomes ``BadImage`` -- never a raw PIL/OS traceback.

``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is deliberately left alone: a truncated file must be
detected (``img.load()`` raises), not silently padded with grey.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Extensions treated as images by ``find_images`` (compared lower-case).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
     ".pbm", ".pnm"}
)

# Default smallest accepted short side (pixels) when a caller passes ``min_size=None``.
DEFAULT_MIN_SIZE = 16

# Reason codes used in ``BadImage.reason`` and in the reports.
REASONS = (
    "missing",        # the path does not exist
    "not_a_file",     # a folder or something else that is not a regular file
    "unreadable",     # permission or I/O error while opening
    "empty",          # zero-byte file
    "not_an_image",   # content is not an image (text, other format, unknown extension)
    "corrupt",        # claims to be an image but cannot be identified or decoded
    "truncated",      # the image data ends early
    "too_small",      # short side below min_size
    "too_large",      # above PIL's decompression-bomb limit
    "unsupported_mode",  # a pixel format we do not know how to turn into RGB
    "unsupported_name",  # a file name that cannot be written to a TSV manifest (tab/newline)
    "unavailable",    # a bundled demo photo that cannot be loaded offline
)


class BadImage(Exception):
    """A file that cannot be turned into an RGB image. ``reason`` is a short code from REASONS."""

    def __init__(self, reason: str, path, detail: str = ""):
        self.reason = reason
        self.path = str(path)
        self.detail = detail
        msg = f"{reason}: {self.path}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


def is_image_name(path) -> bool:
    """True when the file name has an image extension (case-insensitive)."""
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character cut at the end of the sample is still text.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * max(1, len(text))


def _unidentified_reason(path: Path) -> str:
    """Tell 'this is some other kind of file' from 'this image is broken'."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return "unreadable"
    if not head:
        return "empty"
    if not is_image_name(path) or _looks_like_text(head):
        return "not_an_image"
    return "corrupt"


def _classify_decode_error(exc: BaseException) -> str:
    msg = str(exc).lower()
    if isinstance(exc, EOFError) or "truncated" in msg or "premature end" in msg:
        return "truncated"
    return "corrupt"


def _sixteen_bit_to_l(img: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer) greyscale to 8-bit by scaling, not clipping: round(x / 257)."""
    arr = np.asarray(img).astype(np.int64)
    arr = np.clip(arr, 0, 65535)
    arr8 = ((arr * 255 + 32767) // 65535).astype(np.uint8)
    return Image.fromarray(arr8, mode="L") if arr8.ndim == 2 else Image.fromarray(arr8)


def _float_to_l(img: Image.Image) -> Image.Image:
    arr = np.asarray(img, dtype=np.float64)
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    if arr.size and arr.max() <= 1.0 and arr.min() >= 0.0:
        arr = arr * 255.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def _composite_on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> tuple[Image.Image, str | None]:
    """Convert a decoded image to 8-bit RGB. Returns (image, source mode if converted else None)."""
    mode = img.mode
    if mode == "RGB":
        return img, None
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return _sixteen_bit_to_l(img).convert("RGB"), mode
    if mode == "F":
        return _float_to_l(img).convert("RGB"), mode
    if mode == "P":
        if "transparency" in img.info:
            return _composite_on_white(img), "P+transparency"
        return img.convert("RGB"), mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_on_white(img), mode
    if mode in ("L", "1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return img.convert("RGB"), mode
    try:
        return img.convert("RGB"), mode
    except (ValueError, OSError) as exc:
        raise BadImage("unsupported_mode", getattr(img, "filename", ""), f"mode {mode}: {exc}")


def _check_path(path: Path) -> None:
    if not path.exists():
        raise BadImage("missing", path, "no such file")
    if not path.is_file():
        raise BadImage("not_a_file", path, "not a regular file")


def _open(path: Path) -> Image.Image:
    """Open (header only). Raises BadImage for every failure."""
    _check_path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty", path, "zero bytes")
        return Image.open(path)
    except BadImage:
        raise
    except Image.DecompressionBombError as exc:
        raise BadImage("too_large", path, str(exc)) from None
    except UnidentifiedImageError:
        raise BadImage(_unidentified_reason(path), path, "cannot identify image file") from None
    except PermissionError as exc:
        raise BadImage("unreadable", path, str(exc)) from None
    except Exception as exc:  # any decoder error on malformed input  # noqa: BLE001
        raise BadImage(_classify_decode_error(exc), path, f"{type(exc).__name__}: {exc}") from None


def _resolve_min_size(min_size) -> int:
    return DEFAULT_MIN_SIZE if min_size is None else int(min_size)


def probe_image(path, min_size=None) -> tuple[int, int, str, str]:
    """Cheap header check (no pixel decode): returns (width, height, mode, format) or raises BadImage.

    Detects missing, non-image, unidentifiable and too-small files; truncation is only found by a
    full decode (``read_rgb``).
    """
    path = Path(path)
    min_size = _resolve_min_size(min_size)
    img = _open(path)
    try:
        w, h = img.size
        mode, fmt = img.mode, img.format or ""
    finally:
        img.close()
    if min(w, h) < max(1, min_size):
        raise BadImage("too_small", path, f"{w}x{h} < {min_size}")
    return w, h, mode, fmt


def open_rgb(path, min_size=None) -> tuple[Image.Image, str | None]:
    """Fully decode ``path`` to RGB. Returns (image, source mode if a conversion happened, else None).

    Raises ``BadImage`` (and nothing else) for files that cannot be used.
    """
    path = Path(path)
    min_size = _resolve_min_size(min_size)
    img = _open(path)
    rgb = None
    try:
        try:
            img.load()
        except Exception as exc:  # any decoder error on malformed input  # noqa: BLE001
            raise BadImage(_classify_decode_error(exc), path,
                           f"{type(exc).__name__}: {exc}") from None
        oriented = img
        try:
            transposed = ImageOps.exif_transpose(img)
            if transposed is not None:
                oriented = transposed
        except Exception:  # broken EXIF: keep the pixels as stored
            pass
        try:
            rgb, converted = to_rgb(oriented)
        except BadImage as exc:
            raise BadImage(exc.reason, path, exc.detail) from None
        except Exception as exc:  # noqa: BLE001
            raise BadImage("unsupported_mode", path, f"mode {oriented.mode}: {exc}") from None
    finally:
        # Release the file handle (multi-frame formats keep it open after load()).
        if rgb is not img:
            img.close()
    w, h = rgb.size
    if min(w, h) < max(1, min_size):
        raise BadImage("too_small", path, f"{w}x{h} < {min_size}")
    return rgb, converted


def read_rgb(path, min_size=None) -> Image.Image:
    """Fully decoded 8-bit RGB image, or ``BadImage(reason, path)``. ``min_size=None`` -> 16 px."""
    return open_rgb(path, min_size)[0]


def list_files(root) -> tuple[list[Path], list[Path]]:
    """All non-hidden files under ``root`` (recursively, sorted): (image files, other files).

    Raises FileNotFoundError for a missing root and NotADirectoryError when it is a file.
    Follows symlinked folders, visiting each real folder once.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(
            f"image folder not found: {root} (expected a folder of images, e.g. ImageNet class "
            f"subfolders of JPEGs)"
        )
    if not root.is_dir():
        raise NotADirectoryError(f"expected a folder of images, got a file: {root}")
    images, others = [], []
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            (images if is_image_name(name) else others).append(p)
    key = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    return sorted(images, key=key), sorted(others, key=key)


def find_images(root) -> list[Path]:
    """Image files under ``root`` (recursive, by extension, hidden files skipped, sorted).

    A missing root raises FileNotFoundError; a folder with no image files raises ValueError.
    """
    images, others = list_files(root)
    if not images:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        extra = f"; {len(others)} other file(s) ignored" if others else " (the folder is empty)"
        raise ValueError(f"no image files found under {root}: expected files ending in {exts}{extra}")
    return images

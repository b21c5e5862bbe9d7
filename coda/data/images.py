"""Reading image files into RGB, and listing them in a folder.

One job: turn a path into a fully decoded 8-bit RGB ``PIL.Image`` or a ``BadImage`` with a reason
code. What ImageNet holds is converted (CMYK, greyscale, 16-bit, palette, alpha, EXIF
orientation); everything else becomes ``BadImage``, never a raw PIL/OS traceback.

``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is deliberately left alone: a truncated file must be
detected (``img.load()`` raises), not silently padded with grey.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .bad_images import BadImage

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff",
                              ".webp", ".ppm", ".pgm", ".pbm", ".pnm"})
DEFAULT_MIN_SIZE = 16  # smallest accepted short side (pixels) when min_size is None


def is_image_name(path) -> bool:
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def _looks_like_text(head: bytes) -> bool:
    for sample in (head, head[:-3]):  # a multi-byte character cut at the end of the sample is still text
        try:
            text = sample.decode("utf-8")
        except UnicodeDecodeError:
            continue
        return sum(ch.isprintable() or ch in "\r\n\t" for ch in text) >= 0.95 * max(1, len(text))
    return False


def _unidentified_reason(path: Path) -> str:
    """Tell 'this is some other kind of file' from 'this image is broken'."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return "unreadable"
    if not head:
        return "empty"
    return "not_an_image" if not is_image_name(path) or _looks_like_text(head) else "corrupt"


def _decode_error(exc: BaseException, path: Path) -> BadImage:
    msg = str(exc).lower()
    truncated = isinstance(exc, EOFError) or "truncated" in msg or "premature end" in msg
    return BadImage("truncated" if truncated else "corrupt", path, f"{type(exc).__name__}: {exc}")


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer) greyscale to 8-bit by scaling, not clipping: round(x / 257)."""
    arr = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
    return Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8), mode="L").convert("RGB")


def _on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def to_rgb(img: Image.Image) -> tuple[Image.Image, str | None]:
    """A decoded image as 8-bit RGB, and the source mode when a conversion happened."""
    mode = img.mode
    if mode == "RGB":
        return img, None
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return _sixteen_bit_to_rgb(img), mode
    if mode == "P" and "transparency" in img.info:
        return _on_white(img), "P+transparency"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _on_white(img), mode
    return img.convert("RGB"), mode


def _open(path: Path) -> Image.Image:
    """Open (header only). Raises BadImage for every failure."""
    if not path.exists():
        raise BadImage("missing", path, "no such file")
    if not path.is_file():
        raise BadImage("not_a_file", path, "not a regular file")
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
        raise _decode_error(exc, path) from None


def _check_size(size, path: Path, min_size) -> None:
    min_size = DEFAULT_MIN_SIZE if min_size is None else int(min_size)
    if min(size) < max(1, min_size):
        raise BadImage("too_small", path, f"{size[0]}x{size[1]} < {min_size}")


def probe_image(path, min_size=None) -> tuple[int, int]:
    """Cheap header check (no pixel decode): (width, height), or BadImage. Truncation is only
    found by a full decode (``open_rgb``)."""
    path = Path(path)
    with _open(path) as img:
        size = img.size
    _check_size(size, path, min_size)
    return size


def open_rgb(path, min_size=None) -> tuple[Image.Image, str | None]:
    """Fully decode ``path`` to RGB: (image, source mode if converted else None), or BadImage."""
    path = Path(path)
    img = _open(path)
    rgb = None
    try:
        try:
            img.load()
        except Exception as exc:  # any decoder error on malformed input  # noqa: BLE001
            raise _decode_error(exc, path) from None
        try:
            oriented = ImageOps.exif_transpose(img) or img
        except Exception:  # broken EXIF: keep the pixels as stored  # noqa: BLE001
            oriented = img
        try:
            rgb, converted = to_rgb(oriented)
        except Exception as exc:  # noqa: BLE001
            raise BadImage("unsupported_mode", path, f"mode {oriented.mode}: {exc}") from None
    finally:
        if rgb is not img:  # release the file handle (multi-frame formats keep it open after load())
            img.close()
    _check_size(rgb.size, path, min_size)
    return rgb, converted


def read_rgb(path, min_size=None) -> Image.Image:
    """Fully decoded 8-bit RGB image, or ``BadImage(reason, path)``. ``min_size=None`` -> 16 px."""
    return open_rgb(path, min_size)[0]


def list_files(root) -> tuple[list[Path], list[Path]]:
    """All non-hidden files under ``root``, recursively, sorted by relative path: (images, others).
    Follows symlinked folders, visiting each real folder once."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root} (expected a folder of images, "
                                f"e.g. ImageNet class subfolders of JPEGs)")
    if not root.is_dir():
        raise NotADirectoryError(f"expected a folder of images, got a file: {root}")
    images, others, seen = [], [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(n for n in filenames if not n.startswith(".")):
            (images if is_image_name(name) else others).append(Path(dirpath) / name)
    key = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    return sorted(images, key=key), sorted(others, key=key)

"""Writing files safely, reading them with a clear error, and the provenance every artifact
records: the one place for all three.

``atomic_path`` (and ``write_text`` / ``write_json`` over it) is how a stage writes a file: into a
temporary name beside the target, moved onto it only when the write finished, so a crash leaves
the old file or the new one, never a torn one, and a resumed stage can trust whatever it finds.
Two kinds of writes do not go through it, on purpose: logs that grow line by line (train_log.tsv:
a resumed run first cuts it back to its checkpoint's step), and folders a library writes
(diffusers' ``save_pretrained`` in the vae stage) into an output the engines remove before a rerun.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import platform
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import UserError

# The distributions whose versions change numbers: recorded beside every artifact.
LIBRARIES = ("coda", "torch", "diffusers", "peft", "numpy", "pillow", "scikit-image", "torch-fidelity", "lpips")
_CHUNK = 1 << 20


@contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it replaces ``path``.

    The temporary name starts with a dot and ends in ``.tmp``, so globs for finished files never
    see it. ``durable``: fsync the file and its directory too (checkpoints: survive a power loss).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o644)  # mkstemp makes it owner-only; caches may be shared
        if durable:
            with open(temporary, "rb") as f:
                os.fsync(f.fileno())
        os.replace(temporary, path)
        if durable:
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
    except Exception as error:
        if (reason := out_of_space(error)) and not isinstance(error, DiskFullError):
            what, remedy = reason.split("; ", 1)
            raise DiskFullError(f"{what.split(' while writing ')[0]} while writing {path}; {remedy}") from error
        raise
    finally:
        temporary.unlink(missing_ok=True)


# A write that found no room: a full disk, a full quota, or a file over the file system's size limit.
_NO_SPACE = {errno.ENOSPC: ("no space left on the device", "free space (or move work/ to a larger disk)"),
             errno.EDQUOT: ("the disk quota is exceeded", "free space within the quota (or move work/ to another disk)"),
             errno.EFBIG: ("the file is too large for the file system",
                           "move work/ to a file system that takes larger files, or raise the limit (ulimit -f)")}
# Libraries that write from native code (safetensors, torch) report it only in their message.
_NO_SPACE_TEXT = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
                  "File too large": errno.EFBIG, "os error 28": errno.ENOSPC}


class DiskFullError(OSError):
    """A file could not be written for lack of space; the message names the file and what to do."""


def out_of_space(error: BaseException) -> str | None:
    """What ran out and what to do, if ``error`` (or an error it was raised from) is a write that found no room."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFullError):
            return str(error)
        number = error.errno if isinstance(error, OSError) and error.errno in _NO_SPACE else next(
            (n for text, n in _NO_SPACE_TEXT.items() if text in str(error)), None)
        if number is not None:
            reason, remedy = _NO_SPACE[number]
            filename = getattr(error, "filename", None)
            return reason + (f" while writing {filename}" if filename else "") + f"; {remedy}"
        error = error.__cause__ or error.__context__
    return None


class UnreadableFileError(UserError, ValueError):
    """A file exists but cannot be read as what it should be: truncated, corrupt or another format."""


@contextmanager
def reading(path: str | os.PathLike, what: str, remedy: str) -> Iterator[None]:
    """Turn a failed read inside the block into one UnreadableFileError that names ``path``, what it
    should be and what to do. Wrap only the read itself, so a bug elsewhere keeps its traceback."""
    from safetensors import SafetensorError

    try:
        yield
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError, SafetensorError) as error:
        if isinstance(error, pickle.UnpicklingError):  # torch.load(weights_only=True) refused a global
            detail = "it holds Python objects beyond tensors, which weights_only=True loading refuses"
        else:
            detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise UnreadableFileError(f"{path} is not a readable {what} ({detail}); {remedy}") from error


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data) -> Path:
    """JSON with a trailing newline; NaN and infinity are refused (they are not JSON)."""
    return write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def library_versions() -> dict[str, str | None]:
    """Python and the versions of ``LIBRARIES`` (None where one is not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for distribution in LIBRARIES:
        try:
            found[distribution] = version(distribution)
        except PackageNotFoundError:
            found[distribution] = None
    return found


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def directory_sha256(directory: str | os.PathLike) -> str:
    """Hash of every file's relative path and content, in sorted order."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where coda keeps files it derives once and reuses (converted weights): $CODA_CACHE, else
    ~/.cache/coda. Not created here; writers create what they need."""
    configured = os.environ.get("CODA_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "coda"

"""Content hashes that tie artifacts (caches, metrics) to the exact weights they came from."""
from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def directory_sha256(directory: str | Path) -> str:
    """Hash of every file's relative path and content, in sorted order."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()

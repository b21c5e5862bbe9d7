"""Bad-image bookkeeping and the ``on_bad_image`` policy.

A ``BadImageReport`` counts every file it is told about (ok or bad, with a reason code from
``coda.data.images.REASONS``) and serialises to::

    {"total": n, "ok": k, "skipped": m, "by_reason": {"truncated": 2, ...},
     "converted": {"CMYK": 1, ...}, "files": [{"path": ..., "reason": ..., "detail": ...}],
     "ignored": i, "ignored_files": [...]}

``total``/``ok``/``skipped`` count image candidates; files without an image extension are
``ignored`` (counted and listed, never an error).

Policy: ``"skip"`` records and continues; ``"error"`` records, then raises ``BadImageError``
naming the file and the reason. Callers write the report file before the error propagates
(see ``write_reports``), so nothing is lost.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

POLICIES = ("skip", "error")
MAX_IGNORED_LISTED = 1000


class BadImageError(RuntimeError):
    """Raised under ``on_bad_image="error"`` for the first bad file."""

    def __init__(self, path, reason: str, detail: str = "", report_path=None):
        self.path, self.reason, self.detail = str(path), reason, detail
        msg = f"bad image ({reason}): {path}"
        if detail:
            msg += f" -- {detail}"
        msg += ". Set on_bad_image: skip to skip such files"
        if report_path is not None:
            msg += f"; see {report_path}"
        super().__init__(msg)


def check_policy(on_bad_image: str) -> str:
    if on_bad_image not in POLICIES:
        raise ValueError(f"on_bad_image must be one of {POLICIES}, got {on_bad_image!r}")
    return on_bad_image


class BadImageReport:
    """Counts of good and bad files for one split, with the skip/error policy."""

    def __init__(self, on_bad_image: str = "skip", root=None):
        self.on_bad_image = check_policy(on_bad_image)
        self.root = Path(root) if root is not None else None
        self.ok_count = 0
        self.bad: list[dict] = []
        self.converted: Counter = Counter()
        self.ignored: list[dict] = []

    def _rel(self, path) -> str:
        p = Path(path)
        if self.root is not None:
            try:
                return p.relative_to(self.root).as_posix()
            except ValueError:
                pass
        return str(p)

    def add_ok(self, path=None, converted: str | None = None) -> None:
        self.ok_count += 1
        if converted:
            self.converted[converted] += 1

    def add_bad(self, path, reason: str, detail: str = "") -> None:
        """Record a bad file; under the "error" policy raise ``BadImageError`` after recording."""
        self.bad.append({"path": self._rel(path), "reason": reason, "detail": detail})
        if self.on_bad_image == "error":
            raise BadImageError(path, reason, detail)

    def add_ignored(self, path, reason: str = "unsupported_extension") -> None:
        """A file that was never a candidate (e.g. README.txt next to the images): counted, not bad."""
        self.ignored.append({"path": self._rel(path), "reason": reason})

    def add_exception(self, exc) -> None:
        """Record a ``coda.data.images.BadImage``."""
        self.add_bad(exc.path, exc.reason, exc.detail)

    @property
    def skipped(self) -> int:
        return len(self.bad)

    @property
    def total(self) -> int:
        return self.ok_count + self.skipped

    @property
    def by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(f["reason"] for f in self.bad).items()))

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "ok": self.ok_count,
            "skipped": self.skipped,
            "by_reason": self.by_reason,
            "converted": dict(sorted(self.converted.items())),
            "files": list(self.bad),
            "ignored": len(self.ignored),
            "ignored_files": list(self.ignored[:MAX_IGNORED_LISTED]),
        }

    def write(self, path) -> None:
        write_json(path, self.to_dict())

    def summary(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in self.by_reason.items()) or "none"
        out = f"{self.ok_count}/{self.total} ok, {self.skipped} skipped ({reasons})"
        if self.ignored:
            out += f", {len(self.ignored)} non-image file(s) ignored"
        return out


def write_json(path, obj) -> None:
    """Write JSON atomically (temp file then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, path)


def write_reports(path, reports: dict[str, BadImageReport], **extra) -> None:
    """Write several split reports into one JSON file: ``{**extra, split: report, ...}``."""
    obj = dict(extra)
    for name, rep in reports.items():
        obj[name] = rep.to_dict()
    write_json(path, obj)

"""Bad-image bookkeeping: the reason codes, the ``on_bad_image`` policy and ``prepare_report.json``.

Every candidate file counts as ok (noting a colour conversion) or bad (with a reason from
``REASONS``); a file without an image extension is ``ignored`` (counted and listed, never an
error). Policy: ``"skip"`` records and continues; ``"error"`` records, then raises
``BadImageError`` naming the file and the reason, after the report is written.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError
from ..files import write_json

POLICIES = ("skip", "error")
MAX_IGNORED_LISTED = 1000

REASONS = (
    "missing",           # the path does not exist
    "not_a_file",        # a folder or something else that is not a regular file
    "unreadable",        # permission or I/O error while opening
    "empty",             # zero-byte file
    "not_an_image",      # content is not an image (text, other format, unknown extension)
    "corrupt",           # claims to be an image but cannot be identified or decoded
    "truncated",         # the image data ends early
    "too_small",         # short side below min_size
    "too_large",         # above PIL's decompression-bomb limit
    "unsupported_mode",  # a pixel format that cannot be turned into RGB
    "unsupported_name",  # a file name a TSV manifest cannot hold (tab/newline)
    "unavailable",       # a bundled demo photo that cannot be loaded offline
)


class BadImage(Exception):
    """A file that cannot be turned into an RGB image. ``reason`` is a code from REASONS."""

    def __init__(self, reason: str, path, detail: str = ""):
        self.reason, self.path, self.detail = reason, str(path), detail
        super().__init__(f"{reason}: {self.path}" + (f" ({detail})" if detail else ""))


class BadImageError(UserError, RuntimeError):
    """Raised under ``on_bad_image="error"`` for the first bad file."""

    def __init__(self, path, reason: str, detail: str = "", report_path=None):
        self.path, self.reason, self.detail = str(path), reason, detail
        msg = f"bad image ({reason}): {path}" + (f" -- {detail}" if detail else "")
        msg += ". Set on_bad_image: skip to skip such files" + (f"; see {report_path}" if report_path else "")
        super().__init__(msg)


class BadImageReport:
    """Counts of good and bad files for one split, with the skip/error policy."""

    def __init__(self, on_bad_image: str = "skip", root=None):
        if on_bad_image not in POLICIES:
            raise ValueError(f"on_bad_image must be one of {POLICIES}, got {on_bad_image!r}")
        self.on_bad_image = on_bad_image
        self.root = Path(root) if root is not None else None
        self.ok = 0
        self.bad: list[dict] = []
        self.converted: Counter = Counter()
        self.ignored: list[dict] = []

    def _rel(self, path) -> str:
        if self.root is not None and Path(path).is_relative_to(self.root):
            return Path(path).relative_to(self.root).as_posix()
        return str(path)

    def add_ok(self, converted: str | None = None) -> None:
        self.ok += 1
        if converted:
            self.converted[converted] += 1

    def add_bad(self, path, reason: str, detail: str = "") -> None:
        """Record a bad file; under the "error" policy raise ``BadImageError`` after recording."""
        self.bad.append({"path": self._rel(path), "reason": reason, "detail": detail})
        if self.on_bad_image == "error":
            raise BadImageError(path, reason, detail)

    def add_ignored(self, path) -> None:
        """A file that was never a candidate (e.g. README.txt next to the images): counted, not bad."""
        self.ignored.append({"path": self._rel(path), "reason": "unsupported_extension"})

    @property
    def skipped(self) -> int:
        return len(self.bad)

    @property
    def by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(f["reason"] for f in self.bad).items()))

    def to_dict(self) -> dict:
        return {"total": self.ok + self.skipped, "ok": self.ok, "skipped": self.skipped,
                "by_reason": self.by_reason, "converted": dict(sorted(self.converted.items())),
                "files": list(self.bad), "ignored": len(self.ignored),
                "ignored_files": self.ignored[:MAX_IGNORED_LISTED]}


@contextmanager
def reporting(report_path, policy: str, roots: dict, **extra):
    """Yield one ``BadImageReport`` per split (``roots``: split -> folder or None); on exit write
    ``{"on_bad_image": policy, **extra, split: report, ...}`` to ``report_path``, also when a
    ``BadImageError`` (which then names the report) or any other error stops the preparation."""
    reports = {split: BadImageReport(policy, root) for split, root in roots.items()}
    try:
        yield reports
    except BadImageError as exc:
        raise BadImageError(exc.path, exc.reason, exc.detail, report_path) from None
    finally:
        splits = {split: report.to_dict() for split, report in reports.items()}
        write_json(report_path, {"on_bad_image": policy, **extra, **splits})

"""A stage's log file: everything a `coda` command prints also goes to its --log (DVC has no `log:`;
Snakemake's is this file). One log per job: a train job's ranks leave it to rank 0."""
from __future__ import annotations

import os
import sys
from pathlib import Path


class Tee:
    """Write to the console and to the log file."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            try:
                s.write(text)
                s.flush()
            except OSError:  # the log file's disk is full: keep the console, so the error message still shows
                if s is self.streams[0]:
                    raise
                self.streams = tuple(k for k in self.streams if k is not s)
        return len(text)

    def flush(self):
        for s in self.streams:
            try:
                s.flush()
            except OSError:
                if s is self.streams[0]:
                    raise

    def isatty(self):
        return False


def log_to(path: str | None) -> None:
    if not path or int(os.environ.get("RANK", "0")) > 0:
        return  # one log per job: rank 0's
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a" if "TORCHELASTIC_RUN_ID" in os.environ else "w", buffering=1)  # after its launcher's
    sys.stdout, sys.stderr = Tee(sys.__stdout__, handle), Tee(sys.__stderr__, handle)

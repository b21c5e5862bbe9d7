"""What a run reports: per-step curves (train_log.tsv), the progress bar, and run.json."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from ..artifacts import RUN_RECORD
from ..files import library_versions, write_json, write_text



class TsvLog:
    """Per-step curves as TSV; on resume rows after the checkpoint are dropped (they get redone)."""

    def __init__(self, path: Path, columns: list[str], keep_until: int | None):
        self.path, self.columns = path, columns
        rows = []
        if keep_until is not None and path.exists():
            lines = path.read_text().splitlines()
            if lines and lines[0].split("\t") == columns:
                rows = [line for line in lines[1:] if line and int(line.split("\t")[0]) <= keep_until]
        write_text(path, "\t".join(columns) + "\n" + "".join(r + "\n" for r in rows))

    def write(self, values: dict) -> None:
        cells = [values[c] for c in self.columns]
        with self.path.open("a") as f:
            f.write("\t".join(f"{c:.6g}" if isinstance(c, float) else str(c) for c in cells) + "\n")


class _LineStream:
    """tqdm target for log files: each refresh becomes its own line instead of a carriage return."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self):
        self.stream.flush()


def progress_bar(total: int, initial: int, enabled: bool, interval: float) -> tqdm:
    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", mininterval=interval,
                ascii=not interactive, dynamic_ncols=interactive,
                file=sys.stderr if interactive else _LineStream(sys.stderr))


def start_run_record(out_dir: Path, record: dict, start_step: int) -> None:
    """run.json while training: the settings, what ran, library versions and the steps resumed from."""
    path = out_dir / RUN_RECORD
    previous = json.loads(path.read_text()) if start_step and path.exists() else {}
    resumed = previous.get("resumed_from", []) + ([start_step] if start_step else [])
    write_json(path, {**record, "versions": library_versions(), "resumed_from": resumed, "status": "running"})


def finish_run_record(out_dir: Path, steps: int) -> None:
    run = json.loads((out_dir / RUN_RECORD).read_text())
    write_json(out_dir / RUN_RECORD, {**run, "status": "finished", "steps": steps})

"""What a run reports: per-step curves (train_log.tsv), the progress bar, and run.json.

The curves are written while training to ``checkpoints/train_log.tsv``, beside the checkpoints
they resume with, and published to ``train_log.tsv`` when the run ends. Both engines delete a
stage's declared outputs before rerunning it (Snakemake always, DVC unless ``persist``), and
``train_log.tsv`` is one; the checkpoints are not (undeclared for Snakemake, ``persist: true`` for
DVC), so a killed, timed-out or resubmitted run keeps its whole history, as it keeps its weights.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from ..artifacts import RUN_RECORD
from ..files import library_versions, write_json, write_text

PHASE = "phase"  # the published log's second column: which run of the stage wrote the row (latents | images)


class TsvLog:
    """Per-step curves as TSV, one line appended per step; on resume the rows after the checkpoint
    are dropped (they get redone), and so is a line a killed process left half-written."""

    def __init__(self, path: Path, columns: list[str], keep_until: int | None):
        self.path, self.columns = path, columns
        rows = [] if keep_until is None else [row for row in read_rows(path, columns) if int(row[0]) <= keep_until]
        write_text(path, "".join("\t".join(row) + "\n" for row in [columns] + rows))

    def write(self, values: dict) -> None:
        cells = [values[c] for c in self.columns]
        with self.path.open("a") as f:
            f.write("\t".join(f"{c:.6g}" if isinstance(c, float) else str(c) for c in cells) + "\n")


def read_rows(path: Path, columns: list[str] | None = None) -> list[list[str]]:
    """The complete rows of a log (a header, then one row per step), without the header; none if the
    file is missing or its header is not ``columns``."""
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.splitlines()
    if not text.endswith("\n"):  # a line cut short: the process died, or the disk filled, while writing it
        lines = lines[:-1]
    if not lines or (columns is not None and lines[0].split("\t") != columns):
        return []
    width = len(lines[0].split("\t"))
    return [cells for cells in (line.split("\t") for line in lines[1:])
            if len(cells) == width and cells[0].isdigit()]


def publish_log(path: Path, phases: list[tuple[str, Path]]) -> None:
    """Write the stage's ``train_log.tsv`` from its runs' live logs, in order: a quantizer warm-up
    on latents, then the image run. Its steps count on across phases (the image run's step 1 follows
    the warm-up's last), a ``phase`` column says which run each row is from, and a column one phase
    does not log is empty in the other's rows."""
    columns, tables, offset = ["step", PHASE], [], 0
    for phase, live in phases:
        lines = live.read_text().splitlines() if live.is_file() else []
        header = lines[0].split("\t") if lines else ["step"]
        columns += [c for c in header if c not in columns]
        rows = [dict(zip(header, cells)) for cells in read_rows(live)]
        tables.append((phase, offset, rows))
        offset += max((int(row["step"]) for row in rows), default=0)
    out = ["\t".join(columns)]
    for phase, offset, rows in tables:
        for row in rows:
            row = {**row, "step": str(int(row["step"]) + offset), PHASE: phase}
            out.append("\t".join(row.get(c, "") for c in columns))
    write_text(path, "\n".join(out) + "\n")


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

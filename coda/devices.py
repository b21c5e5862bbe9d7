"""Cards per GPU job: a `coda` GPU command claims free cards (one per process) before it does any work;
and ``pick_device``, the one choice of a command's torch device.

Snakemake gives a job no GPU slot id, so `workflow/rules/common.smk` caps the GPUs of a local run's
concurrent jobs at the number of cards (a train job of N processes counts N) and each job takes the
first cards no other job holds: an exclusive, non-blocking `flock` on one lock file per card. The
kernel drops the lock when the process ends, so a killed job never leaves a card locked. Imported by
the Snakefile, so no torch.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .errors import UserError

_claimed = []  # the open lock file: the claim lasts as long as the process


def pick_device(requested=None):
    """The torch device a command runs on: ``requested`` ("cpu", "cuda", "cuda:1"), or with None or
    "auto" CUDA when torch sees a card (after ``claim_gpu``, the claimed one), else the CPU."""
    import torch

    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def gpu_cards() -> list[str]:
    """The cards a job may be given: CUDA_VISIBLE_DEVICES's entries if it is set, else nvidia-smi's."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [card.strip() for card in visible.split(",") if card.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(index) for index, _ in enumerate(line for line in listing.splitlines() if line.startswith("GPU "))]


def default_lock_dir() -> Path:
    # Per user, and per SLURM allocation: two allocations on one node may both call their card "0".
    job = os.environ.get("SLURM_JOB_ID")
    return Path(tempfile.gettempdir()) / (f"coda-gpus-{os.getuid()}" + (f"-slurm{job}" if job else ""))


class TooFewCardsError(UserError, RuntimeError):
    """A job needs more cards than it is given: the user lowers its process count or gives it more."""


def claim_gpu(count: int = 1, lock_dir: Path | None = None, wait_s: float = 30.0) -> str | None:
    """Claim ``count`` cards no other coda job holds and make them this process's only visible devices.

    Call it before anything initialises CUDA. Returns the cards (comma-separated), or None where there
    is nothing to claim: no GPU, or inside a process group's rank (its launcher, `coda train` or
    torchrun, holds the cards, and each rank takes cuda:LOCAL_RANK of them). A job of N processes
    claims N cards at once, all or none. Waits up to `wait_s` for them (a finished job's worker
    processes can hold its locks for a moment), then raises rather than share one; a job given fewer
    cards than it needs stops at once.
    """
    if _claimed:
        return os.environ["CUDA_VISIBLE_DEVICES"]
    cards = gpu_cards()
    if not cards or "LOCAL_RANK" in os.environ:
        return None
    if len(cards) < count:
        raise TooFewCardsError(
            f"this job runs {count} training processes, one per GPU, but sees {len(cards)} GPU(s) "
            f"({','.join(cards)}): set train.processes to at most {len(cards)} for this scale or experiment in "
            f"params.yaml (train.global_batch keeps the run the same), or run it where {count} GPUs are visible")
    lock_dir = Path(lock_dir or default_lock_dir())
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        held = []
        for card in cards:
            handle = open(lock_dir / (card.replace("/", "_") + ".lock"), "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            held.append((card, handle))
            if len(held) == count:
                break
        if len(held) == count:
            for _, handle in held:
                handle.truncate(0)
                handle.write(f"{os.getpid()}\n")
                handle.flush()
            _claimed.extend(handle for _, handle in held)
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(card for card, _ in held)
            return os.environ["CUDA_VISIBLE_DEVICES"]
        for _, handle in held:  # all or none: a partial claim would starve a job that needs fewer
            handle.close()
        if time.monotonic() >= deadline:
            raise RuntimeError(f"fewer than {count} of the {len(cards)} GPU(s) ({','.join(cards)}) are free, "
                               f"the others are held by other coda jobs (lock files in {lock_dir}); run at most "
                               f"one GPU job per card")
        time.sleep(0.5)


class NoGpuError(UserError, RuntimeError):
    """A scale that needs a GPU (scales.<scale>.require_gpu) found none usable and was not told to use the CPU."""


def gpu_problem() -> str | None:
    """Why this process cannot use a GPU (the torch build's CUDA version, the driver), or None if it can."""
    import torch

    if torch.cuda.is_available():
        return None
    build = (f"torch {torch.__version__} is built for CUDA {torch.version.cuda}" if torch.version.cuda
             else f"torch {torch.__version__} is a CPU-only build")
    if shutil.which("nvidia-smi") is None:
        driver = "no NVIDIA driver is found (no nvidia-smi)"
    else:
        try:
            query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=60)
            versions = sorted(set(query.stdout.split()))
            driver = (f"the NVIDIA driver is {', '.join(versions)}" if query.returncode == 0 and versions
                      else f"nvidia-smi finds no GPU ({(query.stderr or query.stdout).strip()[:120] or 'no output'})")
        except (OSError, subprocess.SubprocessError) as error:
            driver = f"nvidia-smi fails ({error})"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = "; CUDA_VISIBLE_DEVICES is empty" if visible is not None and not visible.strip() else ""
    return f"{build}, {driver}{hidden}"


def check_gpu(scale: str, require_gpu: bool, device: str) -> None:
    """Refuse, before any work, to run a GPU-scale job silently on the CPU: with ``device: auto`` at a
    scale whose ``require_gpu`` is true and no usable GPU. ``device: cpu`` asks for the CPU explicitly."""
    if device != "auto" or not require_gpu or (problem := gpu_problem()) is None:
        return
    raise NoGpuError(f"scale {scale!r} needs a GPU (scales.{scale}.require_gpu) and none is usable here: {problem}. "
                     "Run where a GPU is, or install the torch build for your driver's CUDA version "
                     "(https://pytorch.org/get-started/locally/); to run on the CPU anyway (weeks at this scale), "
                     "set train.device: cpu")

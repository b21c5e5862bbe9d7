"""A train job of N processes: `coda train` starts its own ranks through torch's elastic launcher
(what `torchrun` runs), so the pipeline's command is the same for 1 and for 8 processes.

The launcher process holds the job's cards (coda/devices.py) and waits; each rank reruns the same
`coda train` command inside the process group (RANK, LOCAL_RANK, WORLD_SIZE in its environment)
and trains (coda/train/distributed.py: gloo on CPU, NCCL on GPU). The job's CPU threads are shared
among its ranks.
"""
from __future__ import annotations

import os
import sys
import uuid


# What Snakemake sets from a rule's threads (and torch reads: OMP_NUM_THREADS, MKL_NUM_THREADS).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def in_rank() -> bool:
    """Whether this process is a rank of a process group (started by `coda train` or by torchrun)."""
    return "LOCAL_RANK" in os.environ


def run_ranks(processes: int, argv: list[str]) -> int:
    """Run `python -m coda <argv>` as ``processes`` ranks on this machine; their exit status (the
    first failed rank's: 2 for a user error, 3 for a diverged run)."""
    import torch
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The job's threads (Snakemake's OMP_NUM_THREADS and its siblings) split among the ranks: a rank at
    # the job's full count would oversubscribe its CPUs N times. All of them: torch also reads
    # MKL_NUM_THREADS, and a rank's thread count changes its float sums (so a 1- and a 2-process run
    # are equal bit for bit only at equal threads per process).
    per_rank = str(max(1, torch.get_num_threads() // processes))
    for variable in THREAD_VARIABLES:
        if variable in os.environ or variable == "OMP_NUM_THREADS":
            os.environ[variable] = per_rank
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=f"coda-{uuid.uuid4().hex}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0",  # torchrun --standalone
                          max_restarts=0, monitor_interval=0.5)
    print(f"coda train: starting {processes} processes", file=sys.stderr, flush=True)
    try:
        elastic_launch(config, sys.executable)("-m", "coda", *argv)
    except ChildFailedError as error:
        _, failure = error.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0

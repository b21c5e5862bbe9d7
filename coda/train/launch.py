"""A train job of N processes: `coda train` starts its own ranks through torch's elastic launcher
(what `torchrun` runs), so the pipeline's command is the same for 1 and for 8 processes.

The launcher process holds the job's cards (coda/devices.py) and waits; each rank reruns the same
`coda train` command inside the process group (RANK, LOCAL_RANK, WORLD_SIZE in its environment)
and trains (coda/train/distributed.py: gloo on CPU, NCCL on GPU). Each rank sets its own CPU threads,
scales.<scale>.threads (coda/cli.py's pin_cpu), so a rank computes as a 1-process job at equal threads
does, and the job asks for threads x processes CPUs (workflow/rules/train.smk).
"""
from __future__ import annotations

import os
import sys
import uuid


def in_rank() -> bool:
    """Whether this process is a rank of a process group (started by `coda train` or by torchrun)."""
    return "LOCAL_RANK" in os.environ


def run_ranks(processes: int, argv: list[str]) -> int:
    """Run `python -m coda <argv>` as ``processes`` ranks on this machine; their exit status (the
    first failed rank's: 2 for a user error, 3 for a diverged run)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

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

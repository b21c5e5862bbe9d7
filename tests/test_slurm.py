"""The pipeline on a real SLURM: a one-node cluster started here runs the tiny DAG through sbatch.

The test installs Debian's `slurm-wlm` and `munge` where they are missing (as root, from the package
registry; otherwise it is skipped, saying why), starts munged, slurmctld and slurmd on localhost in a
temporary directory (accounting off; MinJobAge 3600, so that `squeue` and this test still see
finished jobs; a `gpu` GRES of 2 backed by two empty stand-in device files, so that `--gpus` schedules) and runs
the README's cluster command: `snakemake --profile profiles/slurm` to results/table1.csv, every
train job 2 processes (on CPU: gloo). The 2-process tokenizer must equal a local 1-process run of
the same global batch, bit for bit (one thread per process in both). The daemons are stopped by
their process ids, pass or fail. 19 minutes on 2 heavily loaded cores (the DAG: 17.6).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from test_pipeline import BIN, ROOT, env, pipeline_copy, set_param

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SBIN = ["/usr/sbin", "/sbin"]  # the daemons live here, often not on a user's PATH
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
PROGRAMS = ["munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol"]


def find(program: str) -> str | None:
    return shutil.which(program, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN]))


def slurm_programs() -> dict[str, str]:
    """The SLURM and munge programs, installed first where they are missing and this is a root Debian."""
    if not all(find(p) for p in PROGRAMS):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("SLURM is not installed and this is no root Debian that could install it: "
                        "apt-get install slurm-wlm munge")
        apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
            result = subprocess.run(command, env=apt, capture_output=True, text=True, timeout=1200)
            assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-3000:]}"
    return {p: find(p) for p in PROGRAMS}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLURM_CONF = """\
ClusterName=coda-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser={user}
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
SwitchType=switch/none
MinJobAge=3600
ReturnToService=2
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running one-node cluster: {"SLURM_CONF": its slurm.conf} for the client commands."""
    programs = slurm_programs()
    if SYSTEM_CONF.exists():
        pytest.skip(f"this machine has a SLURM configuration of its own ({SYSTEM_CONF}): the test starts its "
                    "cluster only where none is configured")
    root = Path(tempfile.mkdtemp(prefix="coda-slurm-"))  # short: the munge socket path has a length limit
    daemons = []
    try:
        for folder in ("munge", "state", "spool", "log"):
            (root / folder).mkdir()
        (root / "munge").chmod(0o711)
        subprocess.run([programs["mungekey"], "-c", "-k", str(root / "munge/munge.key")], check=True)
        host = socket.gethostname().split(".")[0]
        for card in (0, 1):  # stand-in device files: SLURM only checks that they exist
            (root / f"gpu{card}").touch()
        (root / "gres.conf").write_text(f"NodeName={host} Name=gpu File={root}/gpu[0-1]\n")
        (root / "slurm.conf").write_text(SLURM_CONF.format(
            host=host, root=root, ctld_port=free_port(), d_port=free_port(), user=os.environ.get("USER", "root"),
            cpus=os.cpu_count(), memory=8000))
        # The plugin's job step runs `srun` with SLURM_CONF removed from its environment, so the job's
        # commands find the cluster only through the default path: a one-line include there, removed below.
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.write_text(f"Include {root}/slurm.conf\n")
        cluster_env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
        munge = root / "munge"
        commands = [
            [programs["munged"], "-F", "--force", f"--key-file={munge}/munge.key", f"--socket={munge}/munge.socket",
             f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log", f"--seed-file={munge}/munged.seed"],
            [programs["slurmctld"], "-D", "-i"],
            [programs["slurmd"], "-D", "-N", host],
        ]
        for command in commands:
            daemons.append(subprocess.Popen(command, env=cluster_env, stdout=open(root / "log" / (Path(command[0]).name
                                            + ".out"), "w"), stderr=subprocess.STDOUT, start_new_session=True))
            time.sleep(2)
        deadline = time.monotonic() + 120
        state = ""
        while time.monotonic() < deadline:
            state = subprocess.run([programs["sinfo"], "-h", "-o", "%T"], env=cluster_env, capture_output=True,
                                   text=True).stdout.strip()
            if state == "idle":
                break
            time.sleep(1)
        logs = {p.name: p.read_text()[-1500:] for p in (root / "log").iterdir()}
        assert state == "idle", f"the test cluster did not come up (node state {state!r}): {logs}"
        yield {"SLURM_CONF": str(root / "slurm.conf"), "root": root, "scontrol": programs["scontrol"]}
    finally:
        for daemon in reversed(daemons):  # by process id, pass or fail
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=30)
        if SYSTEM_CONF.is_file() and SYSTEM_CONF.read_text() == f"Include {root}/slurm.conf\n":
            SYSTEM_CONF.unlink()
        shutil.rmtree(root, ignore_errors=True)


def readme_cluster_command() -> str:
    """The README's command for a cluster smaller than the profile's sizes: what this test runs."""
    section = (ROOT / "README.md").read_text().split("## Run on a SLURM cluster", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)
             for line in block.splitlines()]
    return next(line for line in lines if line.startswith("snakemake") and "scale=tiny" in line)


def test_tiny_dag_runs_through_slurm_with_two_process_train_jobs(tmp_path, slurm_cluster):
    work = pipeline_copy(tmp_path, "tiny")
    for key, value in {"scales.tiny.experiment.train.processes": 2,
                       "scales.tiny.experiment.train.global_batch": 8}.items():  # 2 x 4 images, or 1 x 4 x 2
        set_param(work, key, value)
    cluster_env = {**env(), "SLURM_CONF": slurm_cluster["SLURM_CONF"], "CUDA_VISIBLE_DEVICES": ""}
    command = shlex.split(readme_cluster_command())
    started = time.monotonic()
    result = subprocess.run([str(BIN / command[0]), *command[1:]], cwd=work, env=cluster_env, capture_output=True,
                            text=True, timeout=3600)
    minutes = (time.monotonic() - started) / 60
    print(f"the tiny DAG through SLURM: {minutes:.1f} min")
    job_logs = "".join(f"\n== {path}\n{path.read_text()[-2000:]}" for path in sorted((work / "logs").rglob("*.log")))
    assert result.returncode == 0, f"{result.stderr[-6000:]}\n{job_logs[-8000:]}"

    assert (work / "results/table1.csv").is_file()
    jobs = subprocess.run([slurm_cluster["scontrol"], "show", "job", "-o"], env=cluster_env, capture_output=True,
                          text=True).stdout.splitlines()
    completed = [job for job in jobs if "JobState=COMPLETED" in job]
    planned = int(re.search(r"^total\s+(\d+)", result.stdout + result.stderr, flags=re.M).group(1))
    assert len(completed) == planned - 1, f"{len(completed)} SLURM jobs completed, {planned} planned"  # fetch: local
    train_jobs = {re.search(r"Comment=rule_train_wildcards_(\S+)", job).group(1): job
                  for job in completed if "Comment=rule_train_" in job}
    for experiment in ("coda", "ablate_vq", "ablate_rvq", "ablate_attn"):  # coda_f8: no row at tiny, 1 card
        assert "TresPerJob=gres:gpu:2" in train_jobs[experiment], train_jobs[experiment]  # SLURM gave it 2 cards
        run_record = json.loads((work / f"work/tiny/train/{experiment}/run.json").read_text())
        assert (run_record["world_size"], run_record["global_batch"]) == (2, 8), experiment

    # A local 1-process run of the same global batch, one thread as each rank had: the same tokenizer.
    set_param(work, "scales.tiny.experiment.train.processes", 1)
    local = subprocess.run([str(BIN / "coda"), "train", "--scale", "tiny", "--experiment", "coda", "--prepared",
                            "work/tiny/prepared", "--vae", "work/tiny/vae", "--cache", "work/tiny/cache", "--out",
                            "one-process"], cwd=work, capture_output=True, text=True, timeout=1200,
                           env={**env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert local.returncode == 0, local.stderr[-3000:]
    assert json.loads((work / "one-process/run.json").read_text())["world_size"] == 1
    assert ((work / "one-process/tokenizer/model.safetensors").read_bytes()
            == (work / "work/tiny/train/coda/tokenizer/model.safetensors").read_bytes())

"""GPU assignment without GPUs: fake cards through CUDA_VISIBLE_DEVICES or a fake nvidia-smi."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from coda.devices import claim_gpu, gpu_cards

# Claims a card, reports it and what CUDA_VISIBLE_DEVICES became, then holds it until `release` exists.
CLAIMER = """
import os, sys, time
from pathlib import Path
from coda.devices import claim_gpu
card = claim_gpu(lock_dir=sys.argv[1], wait_s=float(sys.argv[2]))
print(card, os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
while not Path(sys.argv[3]).exists():
    time.sleep(0.05)
"""


def start_claimer(tmp_path, cards: str, wait_s: float = 0.0) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key not in ("LOCAL_RANK", "SLURM_JOB_ID")}
    return subprocess.Popen([sys.executable, "-c", CLAIMER, str(tmp_path / "locks"), str(wait_s), str(tmp_path / "release")],
                            env={**env, "CUDA_VISIBLE_DEVICES": cards}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_gpu_cards_come_from_cuda_visible_devices_else_nvidia_smi(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert gpu_cards() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_cards() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\necho '  MIG 1g.10gb Device 0: (UUID: MIG-b)'\n"
                    "echo 'GPU 1: NVIDIA H100 (UUID: GPU-c)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    assert gpu_cards() == ["0", "1"]
    fake.unlink()
    assert gpu_cards() == []


def test_no_claim_without_cards_or_under_torchrun(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert claim_gpu(lock_dir=tmp_path) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert claim_gpu(lock_dir=tmp_path) is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1" and not list(tmp_path.iterdir())


def test_concurrent_claims_get_distinct_cards_and_a_killed_job_frees_its_card(tmp_path):
    holders = [start_claimer(tmp_path, "0,1,2,3") for _ in range(4)]
    try:
        claims = [holder.stdout.readline().split() for holder in holders]
        assert sorted(card for card, _ in claims) == ["0", "1", "2", "3"]
        assert all(visible == card for card, visible in claims), "each job sees only its own card"

        extra = start_claimer(tmp_path, "0,1,2,3")
        assert extra.wait(timeout=60) != 0
        assert "held by other coda jobs" in extra.stderr.read()

        holders[2].send_signal(signal.SIGKILL)
        holders[2].wait(timeout=60)
        holders[2] = start_claimer(tmp_path, "0,1,2,3")
        assert holders[2].stdout.readline().split() == claims[2]
    finally:
        (tmp_path / "release").touch()
        for holder in holders:
            holder.wait(timeout=60)
    assert all(holder.returncode == 0 for holder in holders)


def test_a_claim_waits_for_a_card_released_moments_later(tmp_path):
    holder = start_claimer(tmp_path, "7")
    assert holder.stdout.readline().split() == ["7", "7"]
    waiter = start_claimer(tmp_path, "7", wait_s=60)
    time.sleep(1)
    assert waiter.poll() is None, "the second job waits while the card is held"
    (tmp_path / "release").touch()  # the holder ends and frees the card
    assert waiter.stdout.readline().split() == ["7", "7"]
    assert holder.wait(timeout=60) == 0 and waiter.wait(timeout=60) == 0


@pytest.mark.parametrize("cards", ["GPU-5f1c", "MIG-GPU-5f1c/1/0"])
def test_cards_named_by_uuid_are_claimed_as_named(tmp_path, cards):
    holder = start_claimer(tmp_path, cards)
    (tmp_path / "release").touch()
    assert holder.stdout.readline().split() == [cards, cards]
    assert holder.wait(timeout=60) == 0


def test_a_job_of_n_processes_claims_n_cards_at_once_or_says_it_has_too_few(monkeypatch, tmp_path):
    from coda import devices
    from coda.devices import TooFewCardsError

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    with pytest.raises(TooFewCardsError, match="runs 4 training processes, one per GPU, but sees 3"):
        devices.claim_gpu(4, lock_dir=tmp_path / "locks", wait_s=0)
    holder = start_claimer(tmp_path, "0,1,2")  # holds card 0
    try:
        assert holder.stdout.readline().split()[0] == "0"
        with pytest.raises(RuntimeError, match="fewer than 3 of the 3 GPU"):
            devices.claim_gpu(3, lock_dir=tmp_path / "locks", wait_s=0)
        monkeypatch.setattr(devices, "_claimed", [])
        assert devices.claim_gpu(2, lock_dir=tmp_path / "locks", wait_s=0) == "1,2"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1,2"
    finally:
        (tmp_path / "release").touch()
        holder.wait(timeout=60)
        for handle in devices._claimed:
            handle.close()

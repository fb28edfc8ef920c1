"""One device per GPU job on a workstation (saeflow.gpu), with fake device ids: no GPU needed."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

CHILD = """
import os, sys, time
from saeflow.gpu import claim_gpus
ids = claim_gpus(int(sys.argv[1]), wait_s=float(sys.argv[2]), poll_s=0.05)
print(os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"), flush=True)
time.sleep(float(sys.argv[3]))
"""


def spawn(tmp_path, n=1, wait_s=30.0, hold_s=3.0, **env):
    e = dict(os.environ, SAEFLOW_GPU_LOCK_DIR=str(tmp_path / "locks"), **env)
    e.pop("SLURM_JOB_ID", None)
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(n), str(wait_s), str(hold_s)],
        env=e,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def first_line(p):
    line = p.stdout.readline().strip()
    assert line, p.stderr.read()
    return line


def test_concurrent_jobs_get_distinct_devices(tmp_path):
    procs = [spawn(tmp_path, CUDA_VISIBLE_DEVICES="3,5,7") for _ in range(3)]
    got = [first_line(p) for p in procs]
    assert sorted(got) == ["3", "5", "7"]
    for p in procs:
        p.kill()
        p.wait()


def test_a_job_waits_for_a_device_and_gets_it_when_the_holder_dies(tmp_path):
    holder = spawn(tmp_path, CUDA_VISIBLE_DEVICES="0", hold_s=60)
    assert first_line(holder) == "0"
    waiter = spawn(tmp_path, CUDA_VISIBLE_DEVICES="0", hold_s=0)
    time.sleep(1.0)
    assert waiter.poll() is None  # still waiting: device 0 is held
    holder.kill()  # SIGKILL: the kernel drops the flock, nothing to clean up
    holder.wait()
    assert first_line(waiter) == "0"
    waiter.wait(timeout=30)


def test_gives_up_after_wait_s_with_a_clear_error(tmp_path):
    holder = spawn(tmp_path, CUDA_VISIBLE_DEVICES="0", hold_s=60)
    first_line(holder)
    late = spawn(tmp_path, CUDA_VISIBLE_DEVICES="0", wait_s=0.5)
    _, err = late.communicate(timeout=30)
    holder.kill()
    holder.wait()
    assert late.returncode != 0 and "no 1 free GPU(s) among 0" in err


def test_multi_gpu_claims_never_deadlock(tmp_path):
    # two 2-GPU jobs on 3 devices: one runs, the other waits for it, both finish
    procs = [spawn(tmp_path, n=2, hold_s=1.0, CUDA_VISIBLE_DEVICES="0,1,2") for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert all(len(o[0].strip().split(",")) == 2 for o in outs)


def test_noop_under_slurm_without_gpus_and_for_cpu_jobs(tmp_path, monkeypatch):
    from saeflow import gpu

    monkeypatch.setenv("SAEFLOW_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    assert gpu.claim_gpus(1) == [] and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    monkeypatch.delenv("SLURM_JOB_ID")
    assert gpu.claim_gpus(0) == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: a CPU machine
    assert gpu.claim_gpus(1) == [] and "CUDA_VISIBLE_DEVICES" not in os.environ
    with pytest.raises(RuntimeError, match="asks for 3 GPUs but only 2"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
        gpu.claim_gpus(3)

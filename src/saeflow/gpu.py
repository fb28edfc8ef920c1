"""One GPU per job on a multi-GPU workstation.

Snakemake's ``resources: gpu=N`` only *counts* GPUs: it caps how many GPU jobs run at
once but never tells a job which device is its own, so every job would open device 0.
:func:`claim_gpus` fixes that from inside the job, before CUDA is initialised: it takes an
exclusive ``flock`` on one lock file per device under a machine-local directory and sets
``CUDA_VISIBLE_DEVICES`` to the devices it holds. The locks belong to the process, so the
kernel frees them when the job ends, however it ends (exit, crash, SIGKILL): nothing is
left to clean up, and two workflows on one workstation share its GPUs politely too.

Devices to choose from: ``CUDA_VISIBLE_DEVICES`` if set (so ``CUDA_VISIBLE_DEVICES=2,3
snakemake --profile profiles/local-gpu`` keeps the workflow on GPUs 2 and 3), else the
GPUs that ``nvidia-smi -L`` lists. Under SLURM (``SLURM_JOB_ID`` set) nothing is done: the
scheduler already hands each job its own devices.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

_HELD: list = []  # open lock files: the claim lasts as long as the process


def _candidates() -> list[str]:
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        return [d.strip() for d in vis.split(",") if d.strip() and d.strip() != "-1"]
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def lock_dir() -> Path:
    d = os.environ.get("SAEFLOW_GPU_LOCK_DIR") or f"/tmp/saeflow-gpu-locks-{os.getuid()}"
    return Path(d)


def claim_gpus(n: int = 1, wait_s: float | None = None, poll_s: float = 2.0) -> list[str]:
    """Claim ``n`` free GPUs for this process and restrict CUDA to them; returns their ids.

    Returns ``[]`` (and changes nothing) when ``n`` is 0, under SLURM, or on a machine
    without GPUs. When every device is held by other jobs it waits (``wait_s=None``: as
    long as it takes, logging once a minute); Snakemake's ``gpu`` cap makes that rare.
    """
    if n <= 0 or os.environ.get("SLURM_JOB_ID"):
        return []
    devices = _candidates()
    if not devices:
        return []
    if n > len(devices):
        raise RuntimeError(
            f"job asks for {n} GPUs but only {len(devices)} are visible ({','.join(devices)})"
        )
    d = lock_dir()
    d.mkdir(parents=True, exist_ok=True)
    start, last_note = time.monotonic(), time.monotonic()
    while True:
        got = []
        for dev in devices:
            fh = open(d / f"gpu{dev}.lock", "a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            got.append((dev, fh))
            if len(got) == n:
                break
        if len(got) == n:
            _HELD.extend(fh for _, fh in got)
            ids = [dev for dev, _ in got]
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
            log.info("claimed GPU %s (locks in %s)", ",".join(ids), d)
            return ids
        for _, fh in got:  # partial claim: give back and retry, so two jobs never deadlock
            fh.close()
        waited = time.monotonic() - start
        if wait_s is not None and waited >= wait_s:
            raise TimeoutError(
                f"no {n} free GPU(s) among {','.join(devices)} after {waited:.0f} s (locks in {d})"
            )
        if time.monotonic() - last_note >= 60:
            log.info("waiting for a free GPU among %s (%.0f s so far)", ",".join(devices), waited)
            last_note = time.monotonic()
        time.sleep(poll_s)


def release_gpus() -> None:
    """Give back every claimed device (normally left to process exit)."""
    while _HELD:
        _HELD.pop().close()

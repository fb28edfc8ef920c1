"""Wall time per SAE training step with and without reading batches ahead, in one run.

The trainer's step clock (``FitResult.step_times``) leaves out reading the batch; the wall time
between consecutive steps (median, first 5 steps left out) does not. With
:class:`saeflow.sae.data.ReadAhead` the next batches are read by a background thread while the
step runs, so the wall time per step should approach the step clock. Both variants train the same
TopK SAE (d_in 512, 4x, k 32, batch 4096, the sae_speed.py shape) on the same memory-mapped
float16 activations for the same steps, alternating twice, after a warm-up.

    .venv/bin/python benchmarks/sae_read_ahead.py [--steps 60] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import saeflow.sae.train as train
from saeflow.sae.train import fit_array


def run(x, steps, threads, depth) -> tuple[float, float]:
    train.read_ahead_depth = lambda device: depth
    recipe = dict(arch="topk", expansion=4, k=32, lr=3e-3, batch_size=4096)
    stamps = []  # one per finished step: the wall time between steps includes the read
    res = fit_array(
        x,
        recipe,
        steps=steps,
        batch_size=4096,
        threads=threads,
        on_step=lambda step, losses: stamps.append(time.perf_counter()),
    )
    wall = statistics.median(np.diff(stamps[5:]))
    return wall * 1e3, statistics.median(res.step_times[5:]) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=400_000)
    a = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "layer.npy"
        rng = np.random.default_rng(0)
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(a.rows, 512))
        for i in range(0, a.rows, 50_000):
            arr[i : i + 50_000] = rng.normal(size=(min(50_000, a.rows - i), 512))
        arr.flush()
        x = np.load(path, mmap_mode="r")
        run(x, 10, a.threads, 2)  # warm-up
        out = {"inline": [], "read-ahead": []}
        for _ in range(2):
            for name, depth in (("inline", 0), ("read-ahead", 2)):
                out[name].append(run(x, a.steps, a.threads, depth))
    print(f"{'variant':<12} {'wall ms/step':>13} {'step clock ms':>14} {'wall - step':>12}")
    for name, runs in out.items():
        wall = statistics.median(r[0] for r in runs)
        step = statistics.median(r[1] for r in runs)
        print(f"{name:<12} {wall:13.1f} {step:14.1f} {wall - step:12.1f}")
    w_in = statistics.median(r[0] for r in out["inline"])
    w_ra = statistics.median(r[0] for r in out["read-ahead"])
    print(f"read-ahead wall time / inline wall time: {w_ra / w_in:.3f}")


if __name__ == "__main__":
    main()

"""Per-step overhead of training the default config's small SAEs (64 -> 256 latents, batch 256).

Writes a synthetic float16 store of the default's shape (``--rows`` tokens x 64, 100-token
sequences, every 5th sequence held out: ~107k training rows, the ``ctcf_peaks`` size) and runs
``train_sae`` -- the library entry point the ``train_sae`` rule calls -- for ``--steps`` steps in a
fresh process per run, timing where each step's time goes: reading the batch (``BatchStream``),
the training step (forward + hand-written backward), Adam, the scheduler, the decoder
renormalisation, checkpoints, and the rest of the loop; plus the whole call's wall time.

``--src DIR`` (repeatable) also runs another checkout's ``src/`` (e.g. a ``git worktree`` of an
older commit); runs alternate between the sources ``--repeats`` times, so a before/after comparison
is paired under the same machine load. Medians are printed.

    python benchmarks/sae_small_overhead.py --steps 600 --threads 2 --src /tmp/old/src
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PARTS = ["read", "train_step", "opt_step", "sched_step", "normalize", "checkpoint"]
RECIPES = {
    "topk": dict(arch="topk", expansion=4, k=16),
    "batchtopk": dict(arch="batchtopk", expansion=4, k=16),
    "jumprelu": dict(arch="jumprelu", expansion=4, target_l0=16),
    "relu_l1": dict(arch="relu_l1", expansion=4, target_l0=16),
}


def make_store(out: Path, n: int, d: int = 64, seq_len: int = 100) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    atoms = rng.normal(size=(512, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    idx = rng.integers(0, 512, size=(n, 4))
    x = (rng.exponential(1.0, size=(n, 4, 1)) * atoms[idx]).sum(1)
    x += rng.normal(size=d) + 0.05 * rng.normal(size=(n, d))
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "layer1.npy", x.astype(np.float16))
    pos = np.arange(n)
    pd.DataFrame(
        {"seq": pos // seq_len, "pos": pos % seq_len, "token_id": 0, "start": 0, "end": 1}
    ).to_parquet(out / "tokens.parquet")
    manifest = {"n_tokens": n, "d_model": d, "layers": [1], "model": "syn", "dataset": "syn"}
    (out / "manifest.json").write_text(json.dumps(dict(manifest, n_sequences=n // seq_len)))


def worker(store_dir: str, arch: str, steps: int, threads: int, out_dir: str) -> dict:
    import collections
    import time

    t_start = time.perf_counter()
    import torch

    import saeflow.sae.train as T
    from saeflow.activations import ActivationStore
    from saeflow.sae.base import SAE
    from saeflow.sae.data import BatchStream

    acc = collections.defaultdict(float)

    def wrap(owner, name, key):
        f = getattr(owner, name)

        def g(*a, **k):
            t0 = time.perf_counter()
            r = f(*a, **k)
            acc[key] += time.perf_counter() - t0
            return r

        setattr(owner, name, g)

    wrap(BatchStream, "__next__", "read")
    wrap(SAE, "train_step", "train_step")
    wrap(torch.optim.Adam, "step", "opt_step")
    wrap(torch.optim.lr_scheduler.LambdaLR, "step", "sched_step")
    wrap(SAE, "normalize_decoder", "normalize")
    wrap(SAE, "remove_parallel_grad", "normalize")
    wrap(T, "fit", "fit")
    wrap(T, "evaluate", "evaluate")
    wrap(T, "_atomic_torch_save", "checkpoint")
    store = ActivationStore(store_dir)
    ranges = np.stack([store.seq_offsets[:-1], store.seq_offsets[1:]], axis=1)
    is_test = np.arange(len(ranges)) % 5 == 0
    recipe = dict(
        RECIPES[arch], epochs=10, lr=0.003, batch_size=256, checkpoint_every=500, steps=steps
    )
    t0 = time.perf_counter()
    m = T.train_sae(
        store, 1, recipe, ranges[~is_test], ranges[is_test], out_dir, threads=threads, device="cpu"
    )
    res = {p: 1e3 * acc[p] / steps for p in PARTS}
    res["loop_other"] = 1e3 * (acc["fit"] - sum(acc[p] for p in PARTS)) / steps
    res["fit_per_step"] = 1e3 * acc["fit"] / steps
    res["evaluate_s"] = acc["evaluate"]
    res["train_sae_s"] = time.perf_counter() - t0
    res["process_s"] = time.perf_counter() - t_start
    res["fvu"] = m["fvu"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arch", action="append", choices=sorted(RECIPES))
    ap.add_argument("--src", action="append", default=[], help="another checkout's src/ to compare")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=134_000)
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        store_dir, arch, threads, out_dir = args.worker
        print(json.dumps(worker(store_dir, arch, args.steps, int(threads), out_dir)))
        return
    srcs = [str(HERE.parent / "src")] + [str(Path(s).resolve()) for s in args.src]
    archs = args.arch or ["topk"]
    with tempfile.TemporaryDirectory() as tmp:
        make_store(Path(tmp) / "acts", args.rows)
        runs: dict = {}
        for rep in range(args.repeats):
            for arch in archs:
                for src in srcs:
                    env = dict(os.environ, PYTHONPATH=src)
                    cmd = [sys.executable, __file__, "--steps", str(args.steps), "--worker"]
                    cmd += [str(Path(tmp) / "acts"), arch, str(args.threads), f"{tmp}/out{rep}"]
                    p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                    runs.setdefault((arch, src), []).append(json.loads(p.stdout.splitlines()[-1]))
                    ms = runs[(arch, src)][-1]["fit_per_step"]
                    print(f"rep {rep} {arch} {src}: {ms:.2f} ms/step", file=sys.stderr)
                    subprocess.run(["rm", "-rf", f"{tmp}/out{rep}"], check=True)
    cols = ["read", "train_step", "opt_step", "normalize", "loop_other", "fit_per_step"]
    print(f"threads={args.threads}, steps={args.steps}, median of {args.repeats} paired runs")
    head = "".join(f"{c:>13s}" for c in cols)
    print(f"arch / src (ms per step){head}  train_sae_s  process_s  fvu")
    for (arch, src), rs in runs.items():
        med = {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
        spread = max(r["fit_per_step"] for r in rs) / min(r["fit_per_step"] for r in rs)
        print(
            f"{arch:10s} {src[-40:]}\n{'':14s}"
            + "".join(f"{med[c]:13.3f}" for c in cols)
            + f"{med['train_sae_s']:13.2f}{med['process_s']:11.2f}  {med['fvu']:.4f}"
            + f"  (max/min step {spread:.2f})"
        )


if __name__ == "__main__":
    main()

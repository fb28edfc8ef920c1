"""Peak memory of SAE training does not grow with the size of the activation file.

Writes two synthetic activation stores (float16, d=512) of 1 GiB and 8 GiB in the
layout extract_activations produces (layer{L}.npy, seq_offsets.npy, manifest.json
and a sequence table with a train/test split by sequence), then trains the same
TopK recipe on each in a fresh subprocess (same steps, batch size, held-out
evaluation over every test token) and compares the subprocesses' peak resident
memory (VmHWM). PASS when they are within 10% of each other.

    .venv/bin/python benchmarks/sae_memory.py [--sizes 1 8] [--steps 200] [--dir /tmp/x] [--keep]

Needs free disk of the sum of the sizes (9 GiB by default); files are removed
afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

D = 512
SEQ_LEN = 512

WORKER = r"""
import json, sys, time
import pandas as pd
from saeflow.activations import ActivationStore, split_ranges
from saeflow.sae.train import train_sae
store = ActivationStore(sys.argv[1])
seqs = pd.read_parquet(sys.argv[2])
recipe = json.loads(sys.argv[3])
t0 = time.time()
tr, te = split_ranges(store.seq_offsets, seqs)
m = train_sae(store, 1, recipe, tr, te, sys.argv[4], threads=2)
# VmHWM: the peak RSS of this process image. (ru_maxrss is not usable here: subprocess starts the
# worker with vfork, and at exec Linux carries the parent's peak -- which mapped the whole file
while
# writing it -- into the child's ru_maxrss.)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"fvu": m["fvu"], "l0": m["l0"], "steps": m["steps"], "step_ms": m["step_ms"],
                  "seconds": round(time.time() - t0, 1), "test_tokens": m["n_tokens"],
                  "maxrss_mb": hwm / 1024}))
"""


def write_store(directory: Path, gib: float, seed: int = 0) -> tuple[Path, Path]:
    """A float16 (N, 512) layer of ``gib`` GiB: a sparse
    dictionary signal, written block by block."""
    import pandas as pd

    directory.mkdir(parents=True, exist_ok=True)
    n = int(gib * 2**30) // (D * 2)
    n -= n % SEQ_LEN
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(4096, D)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    arr = np.lib.format.open_memmap(
        directory / "layer1.npy", mode="w+", dtype=np.float16, shape=(n, D)
    )
    block = 65536
    base = np.zeros((block, D), dtype=np.float32)
    for i in range(block):  # one reusable block of sparse combinations
        idx = rng.integers(0, 4096, 24)
        base[i] = (rng.exponential(1.0, 24)[:, None] * atoms[idx]).sum(0)
    for a in range(0, n, block):
        b = min(n, a + block)
        shift = rng.normal(size=D).astype(np.float32) * 0.05  # blocks differ a little
        arr[a:b] = (np.roll(base[: b - a], a // block, axis=0) + shift).astype(np.float16)
    arr.flush()
    del arr
    n_seq = n // SEQ_LEN
    np.save(directory / "seq_offsets.npy", np.arange(0, n + 1, SEQ_LEN, dtype=np.int64))
    (directory / "manifest.json").write_text(
        json.dumps(
            {
                "model": "synthetic",
                "dataset": f"{gib}GiB",
                "dtype": "float16",
                "n_tokens": n,
                "d_model": D,
                "n_sequences": n_seq,
                "layers": [1],
                "files": {},
            }
        )
    )
    split = np.where(np.arange(n_seq) % 20 == 0, "test", "train")  # 5% of sequences held out
    seqs = directory.parent / f"{directory.name}_sequences.parquet"
    pd.DataFrame({"name": np.arange(n_seq).astype(str), "split": split}).to_parquet(seqs)
    return directory, seqs


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes", type=float, nargs="+", default=[1, 8], help="activation file sizes in GiB"
    )
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument(
        "--dir", default=None, help="where to write the stores (default: a temp dir under /tmp)"
    )
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="sae_memory_"))
    recipe = dict(
        arch="topk",
        expansion=4,
        k=32,
        lr=3e-3,
        batch_size=4096,
        epochs=1,
        steps=args.steps,
        max_vectors=0,
        warmup_fraction=0.05,
        dead_window=200000,
        aux_k=0,
        aux_coef=1 / 32,
        seed=0,
        checkpoint_every=0,
    )
    rows = []
    try:
        for gib in args.sizes:
            t0 = time.time()
            acts, seqs = write_store(root / f"store_{gib:g}GiB", gib)
            size = (acts / "layer1.npy").stat().st_size / 2**30
            print(f"wrote {size:.2f} GiB in {time.time() - t0:.0f} s", flush=True)
            out = root / f"sae_{gib:g}GiB"
            p = subprocess.run(
                [sys.executable, "-c", WORKER, str(acts), str(seqs), json.dumps(recipe), str(out)],
                capture_output=True,
                text=True,
            )
            if p.returncode != 0:
                sys.exit(f"training on {acts} failed:\n{p.stderr[-3000:]}")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r["file_gib"] = round(size, 2)
            rows.append(r)
            print(json.dumps(r), flush=True)
            shutil.rmtree(acts, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"\n{'file GiB':>9} {'peak RSS MB':>12} {'steps':>6} {'step ms':>8} {'test tokens':>12} "
        f"{'FVU':>7}"
    )
    for r in rows:
        print(
            f"{r['file_gib']:>9} {r['maxrss_mb']:>12.0f} {r['steps']:>6} {r['step_ms']:>8.1f} "
            f"{r['test_tokens']:>12} {r['fvu']:>7.3f}"
        )
    if len(rows) >= 2:
        lo, hi = min(r["maxrss_mb"] for r in rows), max(r["maxrss_mb"] for r in rows)
        ratio = hi / lo
        print(
            f"\npeak RSS ratio largest/smallest file: {ratio:.3f} -> "
            f"{'PASS' if ratio <= 1.10 else 'FAIL'} (within 10%)"
        )


if __name__ == "__main__":
    main()

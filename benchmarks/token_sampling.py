"""Token sampling at extraction (``datasets.<name>.tokens_per_item``): the disk it saves and the SAE
quality it costs, in one run.

From a finished workflow run (its model and prepared dataset), extract one layer in full and
with at most N tokens per item for each N given, train the same SAE recipe on each store for the
same number of steps and seed, and evaluate every SAE on the *full* store's held-out rows (every
token of the held-out items): the held-out FVU of the sampled-store SAEs against the full-store
SAE's. Target (issue 17): within 0.02.

    .venv/bin/python benchmarks/token_sampling.py RUN_DIR --model toy_geneformer --dataset pbmc \\
        --layer 4 --tokens 16 32 64
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from saeflow.activations import ActivationStore, extract_activations, split_ranges
from saeflow.cells.items import shard_items
from saeflow.models import load_model
from saeflow.sae import load_sae
from saeflow.sae.evaluation import activation_metrics
from saeflow.sae.train import train_sae


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--model", default="toy_geneformer")
    ap.add_argument("--dataset", default="pbmc")
    ap.add_argument("--layer", type=int, default=4)
    ap.add_argument("--tokens", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=2)
    a = ap.parse_args()
    run = Path(a.run_dir)
    data = run / "results" / "datasets" / a.dataset
    seqs = pd.read_parquet(data / "sequences.parquet")
    cells = data / "cells.h5ad"
    items = shard_items(seqs, 0, len(seqs), cells if cells.exists() else None)
    adapter = load_model(run / "resources" / "models" / a.model)
    recipe = dict(arch="topk", expansion=4, k=16, lr=3e-3, batch_size=256, steps=a.steps)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stores = {}
        for n in [0, *a.tokens]:
            extract_activations(
                adapter, items, [a.layer], tmp / f"acts{n}", batch_size=32, tokens_per_item=n
            )
            stores[n] = ActivationStore(tmp / f"acts{n}")
        full = stores[0]
        _, full_test = split_ranges(full.seq_offsets, seqs)
        for n, store in stores.items():
            train, test = split_ranges(store.seq_offsets, seqs)
            for seed in range(a.seeds):
                out = tmp / f"sae{n}_{seed}"
                train_sae(store, a.layer, dict(recipe, seed=seed), train, test, out, threads=2)
                m = activation_metrics(load_sae(out), full, a.layer, full_test)
                rows.append(
                    dict(
                        tokens_per_item=n or "all",
                        seed=seed,
                        store_mb=round(store.layer(a.layer).nbytes / 1e6, 2),
                        train_tokens=int((train[:, 1] - train[:, 0]).sum()),
                        heldout_fvu=round(float(m["fvu"]), 4),
                        l0=round(float(m["l0"]), 2),
                    )
                )
    t = pd.DataFrame(rows)
    print(t.to_string(index=False))
    by = t.groupby("tokens_per_item", sort=False).agg(
        store_mb=("store_mb", "first"), heldout_fvu=("heldout_fvu", "mean")
    )
    base = by.loc["all", "heldout_fvu"]
    by["fvu_minus_full"] = (by.heldout_fvu - base).round(4)
    print()
    print(by.to_string())


if __name__ == "__main__":
    main()

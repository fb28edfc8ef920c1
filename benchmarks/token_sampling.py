"""Token sampling at extraction (``datasets.<name>.tokens_per_item``): the disk it saves and the SAE
quality it costs, in one run.

From a finished workflow run (its model and prepared dataset), extract one layer in full and
with at most N tokens per item for each N given, train the same SAE recipe on each store for the
same number of steps and seed, and evaluate every SAE on the *full* store's held-out rows (every
token of the held-out items): the held-out FVU of the sampled-store SAEs against the full-store
SAE's. Target (issue 17): within 0.02.

    .venv/bin/python benchmarks/token_sampling.py RUN_DIR --model toy_geneformer --dataset pbmc \\
        --layer 4 --tokens 16 32 64

``--from-store``: no extraction; the run's own (full) activation store is the full store and each
sampled store is its rows that extraction with ``tokens_per_item`` would keep
(``saeflow.activations.sampled_rows``; tests/models/test_models_activations.py checks they are
the same rows) -- for models too slow to extract twice (the Geneformer V2 rehearsal).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from saeflow.activations import ActivationStore, extract_activations, sampled_rows, split_ranges
from saeflow.cells.items import shard_items
from saeflow.models import load_model
from saeflow.sae import load_sae
from saeflow.sae.evaluation import activation_metrics
from saeflow.sae.train import train_sae
from saeflow.utils import read_json, write_json


def subsample(full: ActivationStore, layer: int, n: int, out: Path) -> ActivationStore:
    """The store extraction with ``tokens_per_item=n`` would write, from the full store's rows."""
    if full.manifest.get("tokens_per_item"):
        raise SystemExit(f"{full.dir}: already sampled (tokens_per_item); need a full store")
    rows = sampled_rows(full.seq_offsets, n, full.manifest.get("sample_seed", 0))  # 0: older stores
    out.mkdir()
    np.save(out / f"layer{layer}.npy", np.asarray(full.layer(layer)[rows]))
    full.tokens.iloc[rows].reset_index(drop=True).to_parquet(out / "tokens.parquet")
    counts = np.diff(full.seq_offsets)
    np.save(out / "seq_offsets.npy", np.concatenate([[0], np.cumsum(np.minimum(counts, n))]))
    man = dict(read_json(full.dir / "manifest.json"), n_tokens=len(rows), layers=[layer])
    man.update(tokens_per_item=n, files={})
    write_json(out / "manifest.json", man)
    return ActivationStore(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--model", default="toy_geneformer")
    ap.add_argument("--dataset", default="pbmc")
    ap.add_argument("--layer", type=int, default=4)
    ap.add_argument("--tokens", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--from-store", action="store_true", help="sample the run's store (above)")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--expansion", type=float, default=4)
    a = ap.parse_args()
    run = Path(a.run_dir)
    data = run / "results" / "datasets" / a.dataset
    seqs = pd.read_parquet(data / "sequences.parquet")
    cells = data / "cells.h5ad"
    recipe = dict(arch="topk", expansion=a.expansion, k=a.k, lr=3e-3, batch_size=256, steps=a.steps)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stores = {}
        if a.from_store:
            run_store = run / "results" / a.model / a.dataset / "activations"
            stores[0] = ActivationStore(run_store)
            for n in a.tokens:
                stores[n] = subsample(stores[0], a.layer, n, tmp / f"acts{n}")
        else:
            items = shard_items(seqs, 0, len(seqs), cells if cells.exists() else None)
            adapter = load_model(run / "resources" / "models" / a.model)
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

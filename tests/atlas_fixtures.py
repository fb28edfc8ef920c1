"""Synthetic run outputs for the atlas tests and the atlas benchmark (benchmarks/atlas_load.py).

``write_dna_run`` writes what a DNA run leaves under results/{model}/{dataset} (catalog, eval,
SAE decoders, recovery) with a planted motif feature; ``write_cells_run`` the single-cell atlas
with a planted marker-gene feature. Sizes are parameters: the tests use small ones, the benchmark
18 layers x 4,608 features.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from saeflow import histogram

#: the CTCF core planted in the contexts of MOTIF_FEATURE (layer MOTIF_LAYER)
MOTIF = "CCACCAGGGGGCG"
MOTIF_LAYER, MOTIF_FEATURE = 2, 7
#: the gene planted at rank 0 of GENE_FEATURE's top genes (layer GENE_LAYER), and its term
GENE, GENE_LAYER, GENE_FEATURE, TERM = "SPI1", 1, 5, "Myeloid differentiation"


def _decoders(path: Path, n_features: int, d: int, rng, prev: np.ndarray | None):
    """A decoder whose rows partly follow the previous layer's (so the flow has persistent
    features)."""
    from safetensors.numpy import save_file

    w = rng.normal(size=(n_features, d)).astype(np.float32)
    if prev is not None:
        keep = rng.random(n_features) < 0.5
        w[keep] = prev[keep] + 0.1 * w[keep] / np.sqrt(d)
    path.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "W_dec": w,
            "W_enc": w.T.copy(),
            "b_dec": np.zeros(d, np.float32),
            "b_enc": np.zeros(n_features, np.float32),
        },
        str(path / "sae_weights.safetensors"),
    )
    (path / "cfg.json").write_text(json.dumps({"d_in": d, "d_sae": n_features}))
    return w


def _hist(rng, n_features: int) -> np.ndarray:
    h = histogram.empty(n_features)
    centre = rng.integers(20, 30, n_features)
    for j in range(-3, 4):
        h[np.arange(n_features), centre + j] = rng.integers(0, 1000, n_features) // (1 + abs(j))
    return h


def _eval(path: Path, layer: int, rng):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "layer": layer,
                "l0": 32.0,
                "explained_variance": float(0.8 + 0.01 * layer),
                "fvu": float(0.2 - 0.01 * layer),
                "dead_fraction": 0.01,
                "dense_fraction": 0.02,
                "loss_recovered": 0.9,
                "seconds": float(rng.random()),
            }
        )
    )


def write_dna_run(
    run: Path,
    *,
    sae: str = "topk",
    layers=(1, 2, 3),
    n_features: int = 64,
    d: int = 16,
    n_contexts: int = 5,
    seed: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)
    prev = None
    for L in layers:
        prev = _decoders(run / "sae" / sae / f"layer{L}", n_features, d, rng, prev)
        _eval(run / "eval" / sae / f"layer{L}.json", L, rng)
        c = run / "catalog" / sae / f"layer{L}"
        c.mkdir(parents=True)
        freq = rng.random(n_features) * 0.05
        freq[::17] = 0  # dead
        tokens = ["A", "C", "G", "T"]
        feats = pd.DataFrame(
            {
                "feature": np.arange(n_features),
                "frequency": freq,
                "mean_activation": rng.random(n_features) * 2,
                "max_activation": (rng.random(n_features) * 5).astype(np.float32),
                "top_tokens": [
                    f"{tokens[f % 4]}:{12 + f % 5},{tokens[(f + 1) % 4]}:3"
                    for f in range(n_features)
                ],
                "svd_max_cos": rng.random(n_features).astype(np.float32),
                "alive": freq > 0,
            }
        )
        feats["svd_aligned"] = feats.alive & (feats.svd_max_cos > 0.5)
        feats.to_parquet(c / "features.parquet", index=False)
        rows = []
        # contexts are slices of one random sequence
        pool = "".join(rng.choice(list("acgt"), 100_000))
        starts, ups = rng.integers(0, len(pool) - 41, (2, n_features * n_contexts))
        for f in np.flatnonzero(freq > 0):
            for rank in range(n_contexts):
                if L == MOTIF_LAYER and f == MOTIF_FEATURE:
                    flank = "".join(rng.choice(list("acgt"), 14))
                    ctx = flank + MOTIF + flank
                else:
                    a, u = int(starts[f * n_contexts + rank]), int(ups[f * n_contexts + rank]) % 41
                    ctx = pool[a : a + u] + pool[a + u].upper() + pool[a + u + 1 : a + 41]
                rows.append(
                    dict(
                        feature=int(f),
                        rank=rank,
                        activation=float(5 - rank * 0.1),
                        sequence=f"chr1:{f}-{rank}",
                        token=ctx[len(ctx) // 2].upper(),
                        start=100 + rank,
                        end=101 + rank,
                        context=ctx,
                    )
                )
        pd.DataFrame(rows).to_csv(c / "contexts.tsv", sep="\t", index=False)
        alive = int((freq > 0).sum())
        (c / "summary.json").write_text(
            json.dumps(
                {
                    "layer": L,
                    "VarExpl": 0.9,
                    "L0": 32.0,
                    "Alive": alive,
                    "Dead": n_features - alive,
                    "SVD-aligned": 3,
                    "Novel": alive - 3,
                    "MeanCos": 0.4,
                }
            )
        )
        np.save(c / "histogram.npy", _hist(rng, n_features))
    rec = run / "recovery" / sae
    rec.mkdir(parents=True)
    pd.DataFrame(
        {
            "layer": list(layers),
            "motif_id": "MA0139.1",
            "motif_name": "CTCF",
            "feature": [MOTIF_FEATURE] * len(layers),
            "f1": 0.5,
            "seconds": 1.0,
        }
    ).to_csv(rec / "recovery.tsv", sep="\t", index=False)
    return run


def write_cells_run(
    run: Path, *, sae: str = "topk", layers=(1, 2), n_features: int = 48, d: int = 16, seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    genes = [f"GENE{i}" for i in range(200)] + [GENE]
    labels = ["CD14+ Monocyte", "CD19+ B", "CD56+ NK"]
    prev = None
    for L in layers:
        prev = _decoders(run / "sae" / sae / f"layer{L}", n_features, d, rng, prev)
        _eval(run / "eval" / sae / f"layer{L}.json", L, rng)
        c = run / "cells" / sae / f"layer{L}"
        c.mkdir(parents=True)
        freq = rng.random(n_features) * 0.1
        feats = pd.DataFrame(
            {
                "feature": np.arange(n_features),
                "frequency": freq,
                "cell_frequency": freq * 5,
                "mean_activation": rng.random(n_features),
                "max_activation": rng.random(n_features) * 3,
                "alive": True,
                "svd_max_cos": rng.random(n_features),
                "svd_aligned": False,
                "novel": True,
                "annotated": False,
                "module": np.arange(n_features) % 4,
            }
        )
        feats.loc[GENE_FEATURE, "annotated"] = L == GENE_LAYER
        feats.to_parquet(c / "features.parquet", index=False)
        top = []
        for f in range(n_features):
            picks = rng.choice(200, 20, replace=False)
            names = [genes[i] for i in picks]
            if L == GENE_LAYER and f == GENE_FEATURE:
                names = [GENE] + names[:19]
            for rank, g in enumerate(names):
                top.append(
                    dict(
                        feature=f,
                        rank=rank,
                        gene=g,
                        mean_activation=1.0 - rank * 0.01,
                        count=50,
                        fire_fraction=0.5,
                        symbol=g,
                    )
                )
        pd.DataFrame(top).to_parquet(c / "top_genes.parquet", index=False)
        pd.DataFrame(
            [
                dict(
                    feature=f, rank=r, cell=r, activation=0.5, name=f"cell{r}", label=labels[r % 3]
                )
                for f in range(n_features)
                for r in range(3)
            ]
        ).to_parquet(c / "top_cells.parquet", index=False)
        pd.DataFrame(
            [
                dict(
                    feature=f,
                    label=lab,
                    n_top=35,
                    n_label=100,
                    overlap=3,
                    expected=2.0,
                    odds_ratio=1.5,
                    p=0.3,
                    q=0.9,
                )
                for f in range(n_features)
                for lab in labels
            ]
        ).to_parquet(c / "celltypes.parquet", index=False)
        enr = [
            dict(
                feature=f,
                library="GO_BP",
                term=f"term {f % 7}",
                k=2,
                n=20,
                K=30,
                N=700,
                expected=0.8,
                fold=2.5,
                odds_ratio=3.0,
                p=0.04,
                q=0.5,
                overlap_genes="A;B",
                family_size=100,
            )
            for f in range(n_features)
        ]
        if L == GENE_LAYER:
            enr.append(
                dict(
                    feature=GENE_FEATURE,
                    library="GO_BP",
                    term=TERM,
                    k=8,
                    n=20,
                    K=30,
                    N=700,
                    expected=0.8,
                    fold=10.0,
                    odds_ratio=20.0,
                    p=1e-6,
                    q=1e-4,
                    overlap_genes=f"{GENE};GENE1",
                    family_size=100,
                )
            )
        pd.DataFrame(enr).to_parquet(c / "enrichment.parquet", index=False)
        pd.DataFrame(
            {
                "module": range(4),
                "size": [n_features // 4] * 4,
                "features": [",".join(str(f) for f in range(m, n_features, 4)) for m in range(4)],
                "term": ["GO_BP:term 1", None, None, None],
                "count": [2, 0, 0, 0],
                "fraction": [0.2, None, None, None],
            }
        ).to_parquet(c / "modules.parquet", index=False)
        (c / "layer.json").write_text(
            json.dumps(
                {
                    "summary": {
                        "layer": L,
                        "Features": n_features,
                        "Alive": n_features,
                        "Annotated": 1,
                        "Ann%": 100 / n_features,
                        "Modules": 4,
                        "Persistent": float("nan"),
                    }
                }
            )
        )
        np.save(c / "histogram.npy", _hist(rng, n_features))
    return run

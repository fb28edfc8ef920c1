"""The embedded single-cell default: pbmc68k_reduced as an h5ad + marker GMT, and the toy
Geneformer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from saeflow.cells.prepare import load_cells, prepare_cells
from saeflow.cells.toy import (
    build_dictionaries,
    train_toy_geneformer,
    write_pbmc,
    write_pbmc_crispri,
)


@pytest.fixture(scope="module")
def pbmc(tmp_path_factory):
    d = tmp_path_factory.mktemp("pbmc")
    info = write_pbmc(d / "pbmc.h5ad", d / "markers.gmt", n_markers=10)
    prepare_cells(
        d / "pbmc.h5ad",
        d / "cells.h5ad",
        d / "cells.parquet",
        label_column="bulk_labels",
        gene_id_column="gene_symbol",
        gene_symbol_column="gene_symbol",
        test_fraction=0.3,
        seed=0,
    )
    return d, info


def test_pbmc_cells_and_markers(pbmc):
    d, info = pbmc
    assert info == {"cells": 700, "genes": 765, "marker_sets": 10}
    cm = load_cells(d / "cells.h5ad")
    assert cm.X.shape == (700, 765) and cm.X.min() >= 0
    assert "CD14+ Monocyte" in set(pd.read_parquet(d / "cells.parquet").label)
    sets = [line.split("\t") for line in (d / "markers.gmt").read_text().splitlines()]
    assert len(sets) == 10 and all(len(s) == 12 for s in sets)
    genes = set(cm.gene_symbols)
    assert all(g in genes for s in sets for g in s[2:])  # markers are genes of the dataset


def test_dictionaries_hold_nonzero_medians(pbmc):
    d, _ = pbmc
    cm = load_cells(d / "cells.h5ad")
    tok, med = build_dictionaries(cm)
    assert list(tok)[:4] == ["<pad>", "<mask>", "<cls>", "<eos>"]
    assert set(tok) - {"<pad>", "<mask>", "<cls>", "<eos>"} == set(med)
    j = 7
    col = cm.X[:, j].toarray().ravel()
    totals = np.asarray(cm.X.sum(1)).ravel()
    norm = col / totals * 10_000
    assert med[cm.gene_ids[j]] == pytest.approx(np.median(norm[norm > 0]), rel=1e-5)


def test_toy_geneformer_loads_as_geneformer_and_learns(pbmc, tmp_path):
    from saeflow.models import load_model
    from saeflow.models.base import Capture

    d, _ = pbmc
    cm = load_cells(d / "cells.h5ad")
    m = train_toy_geneformer(
        cm,
        tmp_path / "model",
        dict(
            steps=300,
            lr=3e-3,
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            intermediate_size=64,
            max_length=48,
            batch_size=16,
        ),
        metrics_path=tmp_path / "metrics.json",
    )
    assert (tmp_path / "metrics.json").exists()
    # better than always guessing the most frequent gene
    assert m["masked_gene_accuracy"] > m["constant_guess_accuracy"]
    ad = load_model(tmp_path / "model")  # detected from the pickled dictionaries
    assert ad.family == "geneformer" and ad.kind == "cells" and ad.n_layers == 2
    tb = ad.tokenize(cm[:3])
    assert tb.input_ids.shape[1] <= 48
    assert tb.genes[0][0] == "" and tb.genes[0][1] in set(cm.gene_ids)
    r = ad.run(tb, Capture(resid=[0, 1, 2]))
    assert r.resid[2].shape == (3, tb.input_ids.shape[1], 32)


def test_simulated_crispri_plants_the_designed_knockdowns(pbmc, tmp_path):
    import anndata

    d, _ = pbmc
    info = write_pbmc_crispri(
        d / "pbmc.h5ad",
        tmp_path / "crispri.h5ad",
        tmp_path / "trrust.tsv",
        cells_per_target=15,
        n_targets=10,
        seed=1,
    )
    assert info["controls"] == 700 and info["perturbed"] == 5 * 15
    a = anndata.read_h5ad(tmp_path / "crispri.h5ad")
    src = anndata.read_h5ad(d / "pbmc.h5ad")
    X, S = a.X.toarray(), src.X.toarray()
    pert = a.obs.perturbation.to_numpy()
    # controls: the real cells, unchanged
    np.testing.assert_array_equal(X[pert == "non-targeting"], S)
    edges = pd.read_csv(tmp_path / "trrust.tsv", sep="\t")
    assert list(edges.columns) == ["source", "target", "mode", "pmids"]
    reg = {tf: set(g.target) for tf, g in edges.groupby("source")}
    assert set(reg) == {"SPI1", "IRF8", "JUNB", "EGR1"} and all(len(v) == 10 for v in reg.values())
    assert len(set.union(*reg.values())) == 40  # disjoint regulons
    assert (
        edges.groupby("source")["mode"].value_counts() == 5
    ).all()  # half activated, half repressed
    genes = list(a.var_names)
    row_of = {n: i for i, n in enumerate(src.obs_names)}
    for tf in ("SPI1", "IRF8", "JUNB", "EGR1", "SHAM"):
        cells = np.flatnonzero(pert == tf)
        assert len(cells) == 15
        base = S[[row_of[c] for c in a.obs.source_cell.iloc[cells]]]
        expect = base.copy()
        if tf != "SHAM":
            expect[:, genes.index(tf)] *= 0.05
            if tf != "EGR1":  # EGR1: the TF alone; its listed targets are left as they were
                mode = edges[edges.source == tf].set_index("target")["mode"]
                expect[:, [genes.index(g) for g in mode.index[mode == "Activation"]]] *= 0.1
                expect[:, [genes.index(g) for g in mode.index[mode == "Repression"]]] *= 8.0
        np.testing.assert_allclose(X[cells], expect, rtol=1e-6)
        # labels travel with the copied cells
        assert list(a.obs.bulk_labels.iloc[cells]) == list(
            src.obs.bulk_labels.loc[a.obs.source_cell.iloc[cells]]
        )

"""The embedded single-cell default: pbmc68k_reduced as an h5ad + marker GMT, and the toy Geneformer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from saeflow.cells import load_cells, prepare_cells
from saeflow.toy_cells import build_dictionaries, train_toy_geneformer, write_pbmc


@pytest.fixture(scope="module")
def pbmc(tmp_path_factory):
    d = tmp_path_factory.mktemp("pbmc")
    info = write_pbmc(d / "pbmc.h5ad", d / "markers.gmt", n_markers=10)
    prepare_cells(d / "pbmc.h5ad", d / "cells.h5ad", d / "cells.parquet", label_column="bulk_labels",
                  gene_id_column="gene_symbol", gene_symbol_column="gene_symbol", test_fraction=0.3, seed=0)
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
    m = train_toy_geneformer(cm, tmp_path / "model", dict(steps=300, lr=3e-3, hidden_size=32, num_layers=2, num_heads=2,
                                                          intermediate_size=64, max_length=48, batch_size=16),
                             metrics_path=tmp_path / "metrics.json")
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

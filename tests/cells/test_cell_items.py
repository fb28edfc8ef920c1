"""saeflow.cells.items: the items a rule runs a model on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from saeflow.cells.items import atlas_cells, shard_items
from saeflow.models.base import CellMatrix


def _cells(n=6):
    X = sp.csr_matrix(np.arange(n * 3, dtype=np.float32).reshape(n, 3))
    return CellMatrix(X, np.array(["E1", "E2", "E3"]), None, np.array([f"c{i}" for i in range(n)]))


def test_shard_items_are_rows_of_the_sequences_or_of_the_cells(tmp_path):
    import anndata as ad

    seqs = pd.DataFrame({"name": [f"s{i}" for i in range(6)], "sequence": ["ACGT"] * 6})
    assert shard_items(seqs, 2, 5).name.tolist() == ["s2", "s3", "s4"]
    c = _cells()
    var = pd.DataFrame({"gene_id": c.gene_ids}, index=["g0", "g1", "g2"])
    a = ad.AnnData(X=c.X, obs=pd.DataFrame(index=c.names), var=var)
    a.write_h5ad(tmp_path / "cells.h5ad")
    got = shard_items(seqs, 2, 5, tmp_path / "cells.h5ad")
    assert isinstance(got, CellMatrix) and got.names.tolist() == ["c2", "c3", "c4"]
    np.testing.assert_array_equal(got.X.toarray(), c.X[2:5].toarray())


def test_atlas_cells_leave_the_perturbed_ones_out():
    c = _cells()
    split = ["train", "perturbed", "test", "perturbed", "train", "train"]
    got = atlas_cells(c, pd.DataFrame({"split": split}))
    assert got.names.tolist() == ["c0", "c2", "c4", "c5"]
    np.testing.assert_array_equal(got.X.toarray(), c.X[[0, 2, 4, 5]].toarray())
    assert got.gene_ids.tolist() == ["E1", "E2", "E3"]
    assert atlas_cells(c, pd.DataFrame({"split": ["train"] * 6})) is c

"""Cells from an h5ad: selection of control cells, split, gene columns, clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from saeflow.cells.prepare import load_cells, prepare_cells
from saeflow.utils import SaeflowError


def write_h5ad(path, n=40, g=12, negative=False, seed=0):
    import anndata

    rng = np.random.default_rng(seed)
    X = rng.poisson(1.0, size=(n, g)).astype(np.float32)
    if negative:
        X[0, 0] = -1.0
    obs = pd.DataFrame(
        {
            "gene": ["non-targeting" if i % 2 == 0 else f"G{i % 5}" for i in range(n)],
            "celltype": [f"t{i % 3}" for i in range(n)],
        },
        index=[f"cell{i}" for i in range(n)],
    )
    var = pd.DataFrame(
        {"gene_name": [f"SYM{j}" for j in range(g)]}, index=[f"ENSG{j:011d}" for j in range(g)]
    )
    anndata.AnnData(X=sp.csr_matrix(X), obs=obs, var=var).write_h5ad(path)
    return X, obs, var


def test_control_cells_subsampled_split_and_read_back(tmp_path):
    X, obs, var = write_h5ad(tmp_path / "in.h5ad")
    t = prepare_cells(
        tmp_path / "in.h5ad",
        tmp_path / "cells.h5ad",
        tmp_path / "cells.parquet",
        perturbation_column="gene",
        control_label="non-targeting",
        label_column="celltype",
        gene_id_column="index",
        gene_symbol_column="gene_name",
        n_cells=10,
        test_fraction=0.3,
        seed=1,
    )
    assert len(t) == 10 and set(t.perturbation) == {"non-targeting"}
    assert (t.split == "test").sum() == 3
    assert pd.read_parquet(tmp_path / "cells.parquet").equals(t)
    cm = load_cells(tmp_path / "cells.h5ad")
    assert list(cm.names) == list(t.name)
    assert list(cm.gene_ids) == list(var.index) and list(cm.gene_symbols) == list(var.gene_name)
    rows = [obs.index.get_loc(n) for n in t.name]
    np.testing.assert_array_equal(cm.X.toarray(), X[rows])
    assert list(t.label) == list(obs.celltype.iloc[rows])
    assert len(cm[2:5]) == 3 and list(cm[2:5].names) == list(t.name[2:5])
    # same seed, same cells
    t2 = prepare_cells(
        tmp_path / "in.h5ad",
        tmp_path / "c2.h5ad",
        tmp_path / "c2.parquet",
        perturbation_column="gene",
        control_label="non-targeting",
        gene_id_column="index",
        n_cells=10,
        test_fraction=0.3,
        seed=1,
    )
    assert list(t2.name) == list(t.name) and load_cells(tmp_path / "c2.h5ad").gene_symbols is None


def test_perturbed_cells_appended_per_target_and_kept_out_of_train_and_test(tmp_path):
    from saeflow.activations import split_ranges

    X, obs, var = write_h5ad(tmp_path / "in.h5ad", n=60)
    t = prepare_cells(
        tmp_path / "in.h5ad",
        tmp_path / "cells.h5ad",
        tmp_path / "cells.parquet",
        perturbation_column="gene",
        control_label="non-targeting",
        gene_id_column="index",
        n_cells=20,
        test_fraction=0.25,
        seed=3,
        perturbed_per_target=4,
    )
    atlas, pert = t[t.split != "perturbed"], t[t.split == "perturbed"]
    assert (
        len(atlas) == 20
        and set(atlas.perturbation) == {"non-targeting"}
        and (atlas.split == "test").sum() == 5
    )
    # the perturbed cells come after the atlas, at most 4 per target, every target present
    assert (t.index[t.split == "perturbed"] >= 20).all()
    counts = pert.perturbation.value_counts()
    targets = sorted(set(obs.gene) - {"non-targeting"})
    assert sorted(counts.index) == targets and (counts <= 4).all() and counts.min() >= 1
    cm = load_cells(tmp_path / "cells.h5ad")
    rows = [obs.index.get_loc(n) for n in t.name]
    np.testing.assert_array_equal(cm.X.toarray(), X[rows])
    assert list(t.perturbation) == list(obs.gene.iloc[rows])
    # SAE training and evaluation read neither the perturbed cells' tokens
    offsets = np.arange(len(t) + 1) * 3
    train, test = split_ranges(offsets, t)
    assert len(train) == 15 and len(test) == 5
    # only some targets
    t2 = prepare_cells(
        tmp_path / "in.h5ad",
        tmp_path / "c2.h5ad",
        tmp_path / "c2.parquet",
        perturbation_column="gene",
        control_label="non-targeting",
        gene_id_column="index",
        perturbed_per_target=2,
        perturbation_targets=["G1"],
    )
    assert (
        set(t2[t2.split == "perturbed"].perturbation) == {"G1"}
        and (t2.split == "perturbed").sum() == 2
    )
    t3 = prepare_cells(
        tmp_path / "in.h5ad",
        tmp_path / "c4.h5ad",
        tmp_path / "c4.parquet",
        perturbation_column="gene",
        control_label="non-targeting",
        gene_id_column="index",
        perturbed_per_target=2,
        perturbation_targets=["G1", "ABSENT"],
    )  # skipped with a warning
    assert set(t3[t3.split == "perturbed"].perturbation) == {"G1"}
    with pytest.raises(SaeflowError, match="no cell has gene == 'NOPE'"):
        prepare_cells(
            tmp_path / "in.h5ad",
            tmp_path / "c3.h5ad",
            tmp_path / "c3.parquet",
            perturbation_column="gene",
            control_label="non-targeting",
            gene_id_column="index",
            perturbed_per_target=2,
            perturbation_targets=["NOPE"],
        )
    assert not (tmp_path / "c3.h5ad").exists()


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(perturbation_column="guide"), "obs has no column 'guide'"),
        (
            dict(perturbation_column="gene", control_label="scrambled"),
            "no cell has gene == 'scrambled'",
        ),
        (dict(gene_symbol_column="symbol"), "var has no column 'symbol'"),
        (dict(layer="counts"), "no layer 'counts'"),
        (dict(layer="raw"), "has no .raw"),
    ],
)
def test_bad_columns_name_the_file_and_column(tmp_path, kw, msg):
    write_h5ad(tmp_path / "in.h5ad")
    kw = dict(dict(gene_id_column="index"), **kw)
    with pytest.raises(SaeflowError, match=msg) as e:
        prepare_cells(
            tmp_path / "in.h5ad", tmp_path / "cells.h5ad", tmp_path / "cells.parquet", **kw
        )
    assert "in.h5ad" in str(e.value)
    assert not (tmp_path / "cells.h5ad").exists() and not (tmp_path / "cells.parquet").exists()


def test_scaled_data_and_truncated_files_are_rejected(tmp_path):
    write_h5ad(tmp_path / "neg.h5ad", negative=True)
    with pytest.raises(SaeflowError, match="negative values"):
        prepare_cells(
            tmp_path / "neg.h5ad",
            tmp_path / "c.h5ad",
            tmp_path / "c.parquet",
            gene_id_column="index",
        )
    write_h5ad(tmp_path / "ok.h5ad")
    data = (tmp_path / "ok.h5ad").read_bytes()
    (tmp_path / "cut.h5ad").write_bytes(data[: len(data) // 3])
    with pytest.raises(SaeflowError, match="cut.h5ad: cannot read as h5ad"):
        prepare_cells(
            tmp_path / "cut.h5ad",
            tmp_path / "c.h5ad",
            tmp_path / "c.parquet",
            gene_id_column="index",
        )
    assert not list(tmp_path.glob("c.*"))


def test_ensembl_top_genes_are_enriched_by_symbol(tmp_path):
    """Geneformer names genes by Ensembl id, the libraries by symbol: the atlas maps ids to symbols
    (from the prepared cells' var) before testing, so a planted set is found."""
    from saeflow.cells.analysis import enrich_top_genes, gene_symbol_map

    write_h5ad(tmp_path / "in.h5ad", g=40)
    prepare_cells(
        tmp_path / "in.h5ad",
        tmp_path / "cells.h5ad",
        tmp_path / "cells.parquet",
        gene_id_column="index",
        gene_symbol_column="gene_name",
    )
    symbols = gene_symbol_map(tmp_path / "cells.h5ad")
    assert symbols["ENSG00000000003"] == "SYM3" and len(symbols) == 40
    ids = [f"ENSG{j:011d}" for j in range(40)]
    top = pd.DataFrame({"feature": [0] * 8 + [1] * 8, "gene": ids[:8] + ids[20:28]})
    top["symbol"] = [symbols[g] for g in top.gene]
    library = {
        "markers": {
            "planted": [f"SYM{j}" for j in range(8)],
            "other": [f"SYM{j}" for j in range(30, 38)],
        }
    }
    df, family = enrich_top_genes(top, library, [symbols[g] for g in ids], min_size=5)
    assert family == 4
    best = df.sort_values("p").iloc[0]
    assert (best.feature, best.term) == (0, "planted") and best.q < 0.05
    # without the mapping the ids cannot meet the sets, and the engine says so instead of reporting
    # nothing
    with pytest.raises(SaeflowError, match="same identifiers as the sets"):
        enrich_top_genes(top.drop(columns="symbol"), library, ids, min_size=5)

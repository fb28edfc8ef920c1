"""Pooled cell datasets (a dataset's `pool:`), the simulated second tissue, and the comparison of
perturbation specificity between runs (saeflow.compare.perturbation)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from wfutil import copy_workflow, load_test_config, planned_jobs, smk

from saeflow.cells.prepare import pool_cells, prepare_cells
from saeflow.compare.perturbation import compare_specificity, mcnemar_exact, tf_specificity, wilson
from saeflow.utils import SaeflowError


def _h5ad(path, genes, n, *, perturbed=0, seed=0):
    import anndata

    rng = np.random.default_rng(seed)
    pert = ["non-targeting"] * n + ["SPI1"] * perturbed
    X = rng.poisson(2.0, size=(n + perturbed, len(genes))).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": rng.choice(["T", "B"], n + perturbed), "gene": pert},
        index=[f"c{i}" for i in range(n + perturbed)],
    )
    var = pd.DataFrame({"symbol": genes, "ensembl": [f"ENSG{g}" for g in genes]}, index=genes)
    anndata.AnnData(X=sp.csr_matrix(X), obs=obs, var=var).write_h5ad(path)
    return X


def _prepared(tmp_path, name, genes, n, *, perturbed=0, ids=True, seed=0):
    h5 = tmp_path / f"{name}.raw.h5ad"
    X = _h5ad(h5, genes, n, perturbed=perturbed, seed=seed)
    cells, table = tmp_path / f"{name}.h5ad", tmp_path / f"{name}.parquet"
    prepare_cells(
        h5,
        cells,
        table,
        perturbation_column="gene" if perturbed else "",
        control_label="non-targeting" if perturbed else "",
        label_column="cell_type",
        gene_id_column="ensembl" if ids else "",
        gene_symbol_column="symbol",
        perturbed_per_target=perturbed,
        seed=seed,
    )
    return (cells, table), X


def test_pool_keeps_shared_genes_sources_splits_and_puts_perturbed_cells_last(tmp_path):
    import anndata

    k562, Xk = _prepared(tmp_path, "k562", ["A", "B", "C", "D"], 30, perturbed=10)
    ts, Xt = _prepared(tmp_path, "ts", ["D", "B", "E", "A"], 50, seed=1)
    summary = pool_cells(
        {"k562": k562, "ts": ts},
        tmp_path / "pool.h5ad",
        tmp_path / "pool.parquet",
        tmp_path / "sources.tsv",
    )
    a, t = anndata.read_h5ad(tmp_path / "pool.h5ad"), pd.read_parquet(tmp_path / "pool.parquet")
    assert a.var.gene_id.tolist() == [
        "ENSGA",
        "ENSGB",
        "ENSGD",
    ]  # the intersection, in the first source's order
    assert a.n_obs == len(t) == 90 and t.name.tolist() == a.obs_names.tolist()
    # atlas cells of both sources first, then the perturbed cells; sources and splits kept
    assert t.split.tolist()[-10:] == ["perturbed"] * 10 and (t.split.iloc[:80] != "perturbed").all()
    assert t.source.tolist() == ["k562"] * 30 + ["ts"] * 50 + ["k562"] * 10
    assert t.name.str.match(r"^(k562|ts):c\d+$").all()
    src_k = pd.read_parquet(k562[1])
    assert (t[t.source == "k562"].split.value_counts() == src_k.split.value_counts()).all()
    # the values of each cell are its own source's values of those genes
    ts_table = pd.read_parquet(ts[1])
    row = int(np.flatnonzero(t.name == "ts:" + ts_table.name.iloc[0])[0])
    orig = anndata.read_h5ad(ts[0])
    np.testing.assert_array_equal(
        a.X[row].toarray().ravel(), orig.X[0].toarray().ravel()[[3, 1, 0]]
    )
    assert summary.set_index("source").genes_dropped.to_dict() == {"k562": 1, "ts": 1}
    assert pd.read_csv(tmp_path / "sources.tsv", sep="\t").perturbed_cells.tolist() == [10, 0]


def test_pool_falls_back_to_symbols_and_refuses_what_cannot_pool(tmp_path):
    import anndata

    a, _ = _prepared(tmp_path, "a", ["A", "B", "C"], 10)
    b, _ = _prepared(tmp_path, "b", ["B", "C", "X"], 10, ids=False)
    pool_cells({"a": a, "b": b}, tmp_path / "p.h5ad", tmp_path / "p.parquet")
    assert anndata.read_h5ad(tmp_path / "p.h5ad").var.gene_symbol.tolist() == [
        "B",
        "C",
    ]  # keyed by symbol
    c, _ = _prepared(tmp_path, "c", ["Y", "Z"], 10)
    with pytest.raises(SaeflowError, match="no gene_id in common"):
        pool_cells({"a": a, "c": c}, tmp_path / "q.h5ad", tmp_path / "q.parquet")
    assert not (tmp_path / "q.h5ad").exists() and not (tmp_path / "q.parquet").exists()
    pd.read_parquet(a[1]).iloc[:5].to_parquet(tmp_path / "short.parquet")
    with pytest.raises(SaeflowError, match="short.parquet: 5 rows but .* holds 10 cells"):
        pool_cells(
            {"a": (a[0], tmp_path / "short.parquet"), "b": b},
            tmp_path / "r.h5ad",
            tmp_path / "r.parquet",
        )
    with pytest.raises(SaeflowError, match="at least two sources"):
        pool_cells({"a": a}, tmp_path / "s.h5ad", tmp_path / "s.parquet")


def test_simulated_tissue_draws_each_gene_from_a_cell_of_the_same_type(tmp_path):
    import anndata

    from saeflow.cells.toy import write_pbmc_tissue

    rng = np.random.default_rng(0)
    X = rng.integers(0, 50, size=(40, 12)).astype(np.float32)
    types = np.array(["T"] * 30 + ["B"] * 10)
    genes = [f"G{i}" for i in range(12)]
    anndata.AnnData(
        X=sp.csr_matrix(X),
        obs=pd.DataFrame({"bulk_labels": types}, index=[f"c{i}" for i in range(40)]),
        var=pd.DataFrame({"gene_symbol": genes}, index=genes),
    ).write_h5ad(tmp_path / "pbmc.h5ad")
    info = write_pbmc_tissue(
        tmp_path / "pbmc.h5ad",
        tmp_path / "tissue.h5ad",
        n_cells=20,
        n_programme=3,
        programme_gain=4.0,
    )
    t = anndata.read_h5ad(tmp_path / "tissue.h5ad")
    assert t.obs.bulk_labels.value_counts().to_dict() == {"B": 10, "T": 10}  # equal shares, not 3:1
    prog = [genes.index(g) for g in info["programme"]]
    Y = t.X.toarray()
    for i, ty in enumerate(t.obs.bulk_labels):
        for j in range(12):
            pool = X[types == ty, j] * (4.0 if j in prog else 1.0)
            assert Y[i, j] in pool, (i, j)
    assert "SIMULATED" in t.uns["saeflow_note"]


def test_wilson_and_mcnemar_match_known_values():
    lo, hi = wilson([0, 5, 3], [10, 10, 0])
    assert lo[0] == 0.0 and hi[0] == pytest.approx(0.2775, abs=1e-4)
    assert wilson(10, 10)[1] == 1.0 and wilson(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    assert (lo[1], hi[1]) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert np.isnan(lo[2]) and np.isnan(hi[2])
    assert mcnemar_exact(0, 6) == pytest.approx(2 * 0.5**6)
    assert mcnemar_exact(3, 3) == pytest.approx(1.0) and mcnemar_exact(0, 0) == 1.0


def _reg(layer, qs):
    return pd.DataFrame(
        {"layer": layer, "network": "trrust", "tf": list(qs), "q": list(qs.values())}
    )


def test_specificity_compares_runs_on_the_tfs_both_tested():
    single = pd.concat(
        [
            _reg(1, {"SPI1": 0.01, "IRF8": 0.2, "JUNB": 0.5, "EGR1": np.nan}),
            _reg(2, {"SPI1": 0.01, "IRF8": 0.01, "JUNB": 0.5, "EGR1": 0.9}),
        ]
    )
    pooled = pd.concat(
        [
            _reg(1, {"SPI1": 0.01, "IRF8": 0.01, "JUNB": 0.01, "EGR1": 0.01}),
            _reg(2, {"SPI1": 0.01, "IRF8": 0.01, "JUNB": 0.5, "EGR1": 0.9}),
        ]
    )
    tg = {
        r: pd.DataFrame(
            {"layer": [1, 1, 2, 2], "target": ["SPI1", "SHAM"] * 2, "responding": [3, 0, 2, 1]}
        )
        for r in ("single", "pooled")
    }
    per = tf_specificity(single, tg["single"], alpha=0.05, layers=[1, 2])
    assert per.tfs_tested.tolist() == [3, 4] and per.tfs_specific.tolist() == [
        1,
        2,
    ]  # NaN q: not tested
    assert per.tf_specificity.tolist() == pytest.approx([1 / 3, 0.5])
    assert per.responding_fraction.tolist() == [0.5, 1.0]
    table, pairs = compare_specificity(
        {"single": single, "pooled": pooled},
        tg,
        {"single": 2, "pooled": 2},
        {"single": [1, 2], "pooled": [1, 2]},
        alpha=0.05,
    )
    assert set(table.run) == {"single", "pooled"} and table.tf_specificity.notna().all()
    p1 = pairs[pairs.layer_a == 1].iloc[0]
    assert p1.shared_tfs == 3 and (p1.only_a, p1.only_b) == (
        0,
        2,
    )  # EGR1 untested in single: not shared
    assert p1.specificity_a == pytest.approx(1 / 3) and p1.specificity_b == pytest.approx(1.0)
    assert p1.delta == pytest.approx(2 / 3) and p1.p_mcnemar == pytest.approx(0.5)
    p2 = pairs[pairs.layer_a == 2].iloc[0]
    assert p2.delta == 0 and p2.p_mcnemar == 1.0
    assert pairs.q_mcnemar.tolist() == pytest.approx([1.0, 1.0])  # BH over the comparison's rows


def test_the_pooled_comparison_is_planned_from_both_sources(tmp_path):
    p = smk(
        copy_workflow(tmp_path, load_test_config()),
        "-n",
        "--forceall",
        "results/comparisons/pooled_vs_single/perturbation.tsv",
        timeout=300,
    )
    jobs = planned_jobs(p)
    assert jobs["pool_cells"] == 1 and jobs["prepare_cells"] == 2 and jobs["build_pbmc_tissue"] == 1
    assert jobs["perturbation_summary"] == 2 and jobs["compare_perturbation"] == 1
    blocks = (p.stdout + p.stderr).split("\n\n")
    pool = next(b for b in blocks if "rule pool_cells" in b)
    assert (
        "results/datasets/pbmc/cells.h5ad" in pool
        and "results/datasets/pbmc_tissue/cells.h5ad" in pool
    )


def test_versioned_ensembl_ids_pool_with_unversioned_ones():
    """Tabula Sapiens' var['ensemblid'] carries versions (ENSG...485.5); Replogle's and Geneformer's
    do not."""
    from saeflow.cells.prepare import strip_ensembl_versions

    out = strip_ensembl_versions(
        ["ENSG00000243485.5", "ENSG00000237613", "GAPDH", "ENSMUSG00000000001.4", "X.1"]
    )
    assert out.tolist() == [
        "ENSG00000243485",
        "ENSG00000237613",
        "GAPDH",
        "ENSMUSG00000000001",
        "X.1",
    ]

"""saeflow.compare.parts: what the comparison rule scripts decide, on small synthetic runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from saeflow.compare.parts import match_runs, sample_sequences, shared_gene_rows
from saeflow.utils import SaeflowError

# --------------------------------------------------------------------------- matching


def _run(label, dataset, kind="peaks", layers=(1, 2), n_layers=2, tmp=None):
    files = {"activations": f"{label}/acts", "saes": [f"{label}/l{layer}" for layer in layers]}
    if tmp is not None:
        files["sequences"] = str(tmp / f"{dataset}.parquet")
    return dict(
        label=label, dataset=dataset, kind=kind, layers=list(layers), n_layers=n_layers, files=files
    )


class FakeCodes:
    """Codes of planted runs: run "b" holds run "a"'s features (columns permuted, rescaled) on every
    row; "c" is independent. Records every call."""

    def __init__(self, n_seq=80, n_feat=12, genes=None, seed=0):
        rng = np.random.default_rng(seed)
        self.base = np.maximum(rng.normal(size=(n_seq, n_feat)), 0) * (
            rng.random((n_seq, n_feat)) < 0.4
        )
        self.other = np.maximum(rng.normal(size=(n_seq, n_feat)), 0)
        self.perm = rng.permutation(n_feat)
        self.genes = genes
        self.n_seq = n_seq
        self.calls = []

    def n_sequences(self, label):
        return self.n_seq

    def __call__(self, label, layer, rows, seq_idx=None):
        self.calls.append((label, layer, rows, None if seq_idx is None else seq_idx.tolist()))
        X = {"a": self.base, "b": 2.0 * self.base[:, self.perm], "c": self.other}[label]
        if rows == "sequence":
            return X[seq_idx]
        names = self.genes[label]  # the codes of gene g: row int(g[1:]) of X
        return pd.DataFrame(X[[int(g[1:]) for g in names]], index=names)


def test_match_runs_pairs_runs_on_shared_sequences(tmp_path):
    pd.DataFrame({"name": [f"s{i}" for i in range(80)]}).to_parquet(tmp_path / "d.parquet")
    pd.DataFrame({"name": [f"s{i}" for i in range(80)]}).to_parquet(tmp_path / "e.parquet")
    runs = [
        _run("a", "d", tmp=tmp_path),
        _run("b", "d", tmp=tmp_path),
        _run("c", "e", tmp=tmp_path),
    ]
    codes = FakeCodes()
    table, feats = match_runs(runs, max_rows=50, seed=3, n_null=3, codes=codes)
    # a-c and b-c are on different DNA datasets: not matched; a-b at both depths
    assert table[["run_a", "layer_a", "run_b", "layer_b"]].values.tolist() == [
        ["a", 1, "b", 1],
        ["a", 2, "b", 2],
    ]
    assert (table.rows == "sequence").all() and (table.n_rows == 50).all()
    assert (table.matched == table.alive_a).all() and (table.matched_fraction == 1.0).all()
    # both runs read the same seeded sample of sequences
    picks = {tuple(c[3]) for c in codes.calls}
    assert len(picks) == 1 and len(next(iter(picks))) == 50
    assert {c[0] for c in codes.calls} == {"a", "b"}
    hit = feats[feats.matched & (feats.layer_a == 1)]
    assert (codes.perm[hit.match.to_numpy()] == hit.feature.to_numpy()).all()
    assert list(table.columns)[:8] == [
        "grid_depth",
        "run_a",
        "layer_a",
        "depth_a",
        "run_b",
        "layer_b",
        "depth_b",
        "rows",
    ]
    # nothing to match: empty tables with the summary's columns
    table, feats = match_runs(runs[1:], codes=FakeCodes())
    assert table.empty and list(table.columns) == list(
        match_runs.__globals__["MATCH_SUMMARY_COLUMNS"]
    )
    assert feats.empty


def test_match_runs_aligns_cell_runs_by_gene_name():
    rng = np.random.default_rng(1)
    genes = {"a": [f"g{i}" for i in range(60)], "b": [f"g{i}" for i in rng.permutation(70)]}
    genes["b"] = [g for g in genes["b"] if g != "g5"]  # a gene only run a has
    runs = [_run("a", "k562", kind="cells"), _run("b", "tissue", kind="cells")]
    codes = FakeCodes(n_seq=70, genes=genes)
    table, _ = match_runs(runs, n_null=2, max_rows=40, codes=codes)
    assert (table.rows == "gene").all() and (table.n_rows == 40).all()
    assert (table.matched_fraction == 1.0).all()  # only when row i is the same gene in both runs
    table, _ = match_runs(runs, n_null=0, max_rows=1000, codes=codes)
    assert (table.n_rows == 59).all()


def test_shared_gene_rows_by_name_and_sampled():
    A = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0]}, index=["G1", "G2", "G3", "G4"])
    B = pd.DataFrame({"y": [30.0, 10.0, 50.0, 20.0]}, index=["G3", "G1", "G5", "G2"])
    a, b = shared_gene_rows(A, B, max_rows=10, seed=0)
    assert a[:, 0].tolist() == [1.0, 2.0, 3.0] and b[:, 0].tolist() == [10.0, 20.0, 30.0]
    a, b = shared_gene_rows(A, B, max_rows=2, seed=0)
    assert len(a) == 2 and (b[:, 0] == 10 * a[:, 0]).all()


def test_sample_sequences_checks_every_store_against_the_table(tmp_path):
    pd.DataFrame({"name": [f"s{i}" for i in range(30)]}).to_parquet(tmp_path / "d.parquet")
    a, b = _run("a", "d", tmp=tmp_path), _run("b", "d", tmp=tmp_path)
    assert sample_sequences(a, b, {"a": 30, "b": 30}, max_rows=50, seed=0).tolist() == list(
        range(30)
    )
    pick = sample_sequences(a, b, {"a": 30, "b": 30}, max_rows=10, seed=0)
    assert len(pick) == 10 and (np.diff(pick) > 0).all()
    with pytest.raises(SaeflowError, match=r"b/acts: 29 sequences but .*d.parquet lists 30"):
        sample_sequences(a, b, {"a": 30, "b": 29}, max_rows=10, seed=0)


def test_run_codes_on_a_stored_run_match_itself(tmp_path):
    """Two runs of the same stored activations and SAE: every alive feature matches its own copy."""
    pytest.importorskip("torch")
    from conftest import make_store

    from saeflow.compare.codes import sequence_codes
    from saeflow.compare.parts import RunCodes
    from saeflow.sae.topk import TopKSAE

    store, _ = make_store(tmp_path, n=600, d=16)
    sae = TopKSAE(16, 32, k=4, seed=0)
    sae.save(tmp_path / "sae1")
    pd.DataFrame({"name": [f"s{i}" for i in range(60)]}).to_parquet(tmp_path / "d.parquet")
    runs = [
        dict(
            _run(k, "d", layers=[1], n_layers=1, tmp=tmp_path),
            files=dict(
                activations=str(store.dir),
                saes=[str(tmp_path / "sae1")],
                sequences=str(tmp_path / "d.parquet"),
            ),
        )
        for k in ("x", "y")
    ]
    codes = RunCodes(runs)
    assert codes.n_sequences("x") == 60
    pick = np.array([0, 5, 9])
    got = codes("x", 1, "sequence", pick)
    np.testing.assert_allclose(got, sequence_codes(store, sae, 1, pick), rtol=1e-6)
    assert codes("x", 1, "sequence", pick) is got  # computed once
    table, feats = match_runs(runs, n_null=2, codes=RunCodes(runs))
    assert table.n_rows.tolist() == [60] and table.matched.item() == table.alive_a.item() > 0
    alive = feats[feats.alive]
    assert (alive.match == alive.feature).all()


# --------------------------------------------------------------------------- per-layer tables


def test_organisation_tables_per_run_with_every_fraction(tmp_path):
    from saeflow.compare.parts import ORGANISATION_COLUMNS, organisation_tables

    dirs = []
    for layer, alive in ((1, [True, True, False, True]), (2, [True, False, False, False])):
        d = tmp_path / f"layer{layer}"
        d.mkdir()
        pd.DataFrame(
            {"feature": range(4), "alive": alive, "svd_aligned": [True, False, False, False]}
        ).to_parquet(d / "features.parquet")
        dirs.append(str(d))
    runs = [dict(label="r", layers=[2, 1], n_layers=2, files={"features": dirs[::-1]})]
    t = organisation_tables(runs)["r"]
    assert t.layer.tolist() == [1, 2] and t.alive.tolist() == [3, 1]  # layers by their own dir
    assert set(ORGANISATION_COLUMNS) <= set(t.columns) and t.module_fraction.isna().all()
    pd.DataFrame({"feature": range(4)}).to_parquet(tmp_path / "layer1/features.parquet")
    with pytest.raises(SaeflowError, match=r"layer1/features.parquet: the feature table .*'alive'"):
        organisation_tables(runs)


def test_annotation_columns_rates_of_any_run_then_shared_columns():
    from saeflow.compare.parts import annotation_columns

    dna = pd.DataFrame(
        columns=["layer", "Alive", "Dead", "Novel", "alive_fraction", "novel_fraction"]
    )
    cells = pd.DataFrame(
        columns=["layer", "Features", "Alive", "Annotated", "alive_fraction", "annotated_fraction"]
    )
    rates, shared = annotation_columns({"d": dna, "c": cells})
    assert rates == ["alive_fraction", "annotated_fraction", "novel_fraction"]
    assert shared == ["Alive"]
    rates, shared = annotation_columns({"c": cells, "d": dna.assign(Features=0)})
    assert rates == ["alive_fraction", "annotated_fraction", "novel_fraction"]
    assert shared == ["Features", "Alive"]  # the first run's order


def test_head_scan_depth_tables_one_line_per_run_and_motif():
    from saeflow.compare.parts import head_scan_depth_tables

    def scan(n_layers, motifs):
        return pd.DataFrame(
            [
                dict(motif=m, layer=layer, head=h, r=0.1 * h + layer, q=0.5, rho=0.5, passes=h == 1)
                for m in motifs
                for layer in range(1, n_layers + 1)
                for h in range(2)
            ]
        )

    tables, n_layers = head_scan_depth_tables(
        {"a": scan(4, ["M1", "M2"]), "b": scan(2, ["M2"])}, {"a": 4, "b": 2}, ["M2"]
    )
    assert list(tables) == ["a M2", "b M2"] and n_layers == {"a M2": 4, "b M2": 2}
    assert tables["a M2"].layer.tolist() == [1, 2, 3, 4] and (tables["a M2"].motif == "M2").all()
    assert tables["b M2"].best_r.tolist() == pytest.approx([1.1, 2.1])


# --------------------------------------------------------------------------- OV / QK audit


class HeadModel:
    """Stand-in adapter: every block's head 0 copies d_model direction 1 (gain 2)."""

    def __init__(self):
        self.blocks = []

    def head_weights(self, block):
        self.blocks.append(block)
        d, h = 8, 2
        W_V, W_O = np.zeros((2, d, h)), np.zeros((2, h, d))
        W_V[0, 1, 0], W_O[0, 0, 1] = 1.0, 2.0
        return {"W_Q": np.ones((2, d, h)), "W_K": np.ones((2, d, h)), "W_V": W_V, "W_O": W_O}


def _audit_run(tmp_path, label, ablation):
    """A 4-block run with SAEs at layers 2 and 4; ``ablation``: layer -> (motif, feature) rows."""
    from saeflow.sae.topk import TopKSAE

    d = tmp_path / label
    d.mkdir()
    scan = pd.DataFrame(
        [
            dict(motif="M", layer=b, head=h, r=0.9 if (b, h) == (3, 0) else 0.1 * h)
            for b in range(1, 5)
            for h in range(2)
        ]
    )
    scan.to_csv(d / "head_scan.tsv", sep="\t", index=False)
    files = {"head_scan": str(d / "head_scan.tsv"), "saes": [], "ablation": []}
    for layer in (2, 4):
        sae = TopKSAE(8, 16, k=2, seed=layer)
        with __import__("torch").no_grad():
            sae.W_dec.zero_()
            sae.W_dec[5, 1] = 1.0  # feature 5's decoder row: direction 1
        sae.save(d / f"sae{layer}")
        rows = ablation.get(layer, [])
        pd.DataFrame(rows, columns=["motif", "feature"]).to_csv(
            d / f"ablation{layer}.tsv", sep="\t", index=False
        )
        files["saes"].append(str(d / f"sae{layer}"))
        files["ablation"].append(str(d / f"ablation{layer}.tsv"))
    return dict(label=label, layers=[2, 4], n_layers=4, files=files)


def test_audit_runs_reads_each_run_and_audits_its_top_heads(tmp_path):
    pytest.importorskip("torch")
    from saeflow.compare.parts import audit_plot_table, audit_runs

    runs = [_audit_run(tmp_path, "a", {2: [("M", 5)]}), _audit_run(tmp_path, "b", {4: [("M", 5)]})]
    models, loaded = {}, []

    def load(r):
        loaded.append(r["label"])
        return models.setdefault(r["label"], HeadModel())

    t = audit_runs(runs, load, heads="top", top_heads=1, k=1)
    assert loaded == ["a", "b"] and list(t.columns)[0] == "run"
    # the top head of the blocks next to each run's motif-feature layers: a (layer 2): blocks 2 and
    # 3, head 0 of block 3; b (layer 4): block 4 only, its head 1
    assert models["a"].blocks == [3] and models["b"].blocks == [4]
    a = t[t.run == "a"].iloc[0]  # run a's feature sits at layer 2: the read side of block 3
    assert (a.layer, a["head"], a.side, a.sae_layer, a.feature) == (3, 0, "read", 2, 5)
    assert a.write_cos == pytest.approx(1.0) and a.self_gain == pytest.approx(2.0)
    b = t[t.run == "b"]  # layer 2's ablation table is empty: layer 4's feature, at block 4's write
    assert b[["layer", "head", "side", "sae_layer"]].values.tolist() == [[4, 1, "write", 4]]
    assert audit_plot_table(t, 2).direction.str.startswith(("a M f5", "b M f5")).all()
    assert audit_plot_table(t, 1).direction.equals(t.direction)
    with pytest.raises(SaeflowError, match=r"ablation2.tsv, .*ablation4.tsv: no motif feature"):
        audit_runs([_audit_run(tmp_path, "c", {})], load)
    assert loaded == ["a", "b"]  # the model is not loaded when there is nothing to audit


def test_log_specificity_pairs_one_line_per_pair(caplog):
    import logging

    from saeflow.compare.parts import log_specificity_pairs

    pairs = pd.DataFrame(
        dict(
            run_a=["a", "a"],
            layer_a=[1, 2],
            run_b=["b", "b"],
            layer_b=[2, 4],
            shared_tfs=[5, 7],
            specificity_a=[0.5, 0.25],
            specificity_b=[0.125, 0.75],
            p_mcnemar=[0.01, 0.5],
            q_mcnemar=[0.02, 0.5],
        )
    )
    with caplog.at_level(logging.INFO, logger="rule"):
        log_specificity_pairs(pairs, logging.getLogger("rule"))
    assert [r.getMessage() for r in caplog.records] == [
        "a L1 vs b L2: 5 shared TFs, specificity 0.500 vs 0.125, McNemar p 0.01 (q 0.02)",
        "a L2 vs b L4: 7 shared TFs, specificity 0.250 vs 0.750, McNemar p 0.5 (q 0.5)",
    ]

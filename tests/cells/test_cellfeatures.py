"""Single-cell feature analyses on synthetic cell stores and SAEs with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scipy.stats import fisher_exact, hypergeom

from saeflow.activations import ActivationStore
from saeflow.cells.features import (
    CellFeatureStats,
    annotation_by_alignment,
    bh,
    celltype_enrichment,
    feature_table,
    layer_summary,
    perturbation_response,
    regulatory_logic,
    sample_activations,
    stream_cell_features,
    summary_table,
    svd_comparison,
    top_cell_sets,
    top_cells,
    top_genes,
)
from saeflow.sae import ReluL1SAE
from saeflow.sae.modules import (
    coactivation_modules,
    cooccurrence,
    module_terms,
    pmi_edges,
    track_features,
)
from saeflow.utils import SaeflowError, write_json

LABELS = np.array(["A", "B", "C"])


def write_cell_store(
    path, x: np.ndarray, cell_of_token: np.ndarray, genes: np.ndarray, n_cells: int, layer: int = 1
):
    """An activation directory in the layout extract_activations writes for cell models."""
    path.mkdir(parents=True)
    np.save(path / f"layer{layer}.npy", x.astype(np.float16))
    counts = np.bincount(cell_of_token, minlength=n_cells)
    pos = np.arange(len(x)) - np.repeat(np.r_[0, np.cumsum(counts)[:-1]], counts)
    pd.DataFrame(
        {
            "seq": cell_of_token.astype(np.int32),
            "pos": pos.astype(np.int32),
            "token_id": np.int32(0),
            "start": np.int32(0),
            "end": np.int32(0),
            "gene": genes.astype(object),
        }
    ).to_parquet(path / "tokens.parquet")
    np.save(path / "seq_offsets.npy", np.r_[0, np.cumsum(counts)].astype(np.int64))
    write_json(
        path / "manifest.json",
        {
            "n_tokens": len(x),
            "d_model": x.shape[1],
            "layers": [layer],
            "model": "syn",
            "dataset": "syn",
            "n_sequences": n_cells,
            "dtype": "float16",
        },
    )
    return ActivationStore(path)


def planted_cells(tmp_path, n_cells=150, n_genes=40, F=16, seed=0):
    """Cells of labels A/B/C with 12-24 distinct genes each; activations in latent space (identity
    SAE):

    * background: every feature fires on 5% of tokens at 0.5-1.5;
    * feature 0 fires at 3 on every token of gene G07 (and at 10 on the 2 tokens of the rare gene
    RARE);
    * feature 1 fires at 2 on half the tokens of cells labelled B.
    """
    rng = np.random.default_rng(seed)
    labels = LABELS[np.arange(n_cells) % 3]
    gene_names = np.array([f"G{j:02d}" for j in range(n_genes)])
    cell_of, genes = [], []
    for c in range(n_cells):
        k = rng.integers(12, 25)
        cell_of += [c] * k
        genes += list(rng.choice(gene_names, k, replace=False))
    cell_of, genes = np.array(cell_of), np.array(genes, dtype=object)
    genes[[5, 40]] = "RARE"
    n = len(genes)
    x = np.where(rng.random((n, F)) < 0.05, rng.uniform(0.5, 1.5, (n, F)), 0.0)
    x[genes == "G07", 0] = 3.0
    x[genes == "RARE", 0] = 10.0
    inb = (labels[cell_of] == "B") & (rng.random(n) < 0.5)
    x[inb, 1] = 2.0
    store = write_cell_store(tmp_path / "acts", x, cell_of, genes, n_cells)
    return store, labels


def identity_sae(F):
    sae = ReluL1SAE(F, F)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(F))
        sae.W_dec.copy_(torch.eye(F))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    store, labels = planted_cells(tmp_path_factory.mktemp("cells"))
    stats = stream_cell_features(identity_sae(16), store, 1, chunk=50)
    return store, labels, stats


# --- top genes, top cells, frequencies -----------------------------------------------------------


def test_planted_gene_is_top_and_min_count_filters_rare_genes(planted):
    _, _, stats = planted
    tg = top_genes(stats, top_n=5, min_count=10)
    f0 = tg[tg.feature == 0]
    assert f0.iloc[0].gene == "G07" and f0.iloc[0]["rank"] == 0
    assert f0.iloc[0].mean_activation == pytest.approx(3.0, abs=0.05)
    assert (
        f0.iloc[0].fire_fraction == 1.0
        and f0.iloc[0]["count"] == stats.gene_tokens[list(stats.genes).index("G07")]
    )
    assert "RARE" not in set(tg.gene)  # 2 tokens < min_count
    tg1 = top_genes(stats, top_n=5, min_count=1)
    assert list(tg1[tg1.feature == 0].gene[:2]) == ["RARE", "G07"]
    assert tg.groupby("feature").size().max() <= 5
    # the per-feature activation histogram counts exactly the tokens where each feature fires
    assert stats.act_hist is not None and (stats.act_hist.sum(1) == stats.fire_count).all()
    # means are over all tokens of the gene, zeros included, and descend within a feature
    assert (tg.groupby("feature").mean_activation.diff().dropna() <= 0).all()


def test_feature_table_and_top_cells(planted):
    _, labels, stats = planted
    ft = feature_table(stats)
    assert ft.alive.all() and len(ft) == 16
    assert ft.frequency.iloc[2] == pytest.approx(0.05, abs=0.02)
    # co-occurrence within cells from the per-cell fire counts: diagonal = cells where each feature
    # fires
    c, n = cooccurrence(stats.cell_fires >= 1)
    assert n == stats.n_cells and (np.diag(c) == np.round(ft.cell_frequency * n)).all()
    tc = top_cells(stats, top_n=10, by="mean", labels=labels)
    assert (tc[tc.feature == 1].label == "B").all()
    tm = top_cells(
        stats, top_n=3, by="max", names=np.array([f"c{i}" for i in range(stats.n_cells)])
    )
    top0 = tm[tm.feature == 0]
    assert top0.activation.iloc[0] == pytest.approx(10.0, rel=1e-3) and top0.name.iloc[
        0
    ].startswith("c")
    with pytest.raises(SaeflowError, match="by must be"):
        top_cells(stats, by="median")


# --- cell-type enrichment ------------------------------------------------------------------------


def test_label_feature_is_enriched_for_its_label_only(planted):
    _, labels, stats = planted
    en = celltype_enrichment(stats.cell_mean(), labels, top_fraction=0.2)
    f1 = en[en.feature == 1].set_index("label")
    assert f1.loc["B", "q"] < 0.05 and f1.loc["B", "odds_ratio"] > 1
    assert (f1.loc[["A", "C"], "q"] > 0.05).all()
    # background features (labels independent of activity) mark no label, up to BH's allowance of
    # false discoveries
    assert (en[en.feature >= 2].q < 0.05).sum() <= 1
    assert len(en) == 16 * 3 and np.allclose(en.q, bh(en.p))


def test_fisher_pvalues_equal_scipy_fisher_exact(planted):
    _, labels, stats = planted
    means = stats.cell_mean()
    en = celltype_enrichment(means, labels, top_fraction=0.2)
    top = top_cell_sets(means, 0.2).toarray()
    dense = means.toarray()
    N = len(labels)
    k = int(np.ceil(0.2 * N))
    for f, lab in [(1, "B"), (1, "A"), (0, "C"), (5, "B"), (9, "A")]:
        v = dense[:, f]
        cut = np.sort(v)[::-1][k - 1]
        expect_top = (v >= cut) & (v > 0)  # independent definition of the top set
        np.testing.assert_array_equal(top[:, f], expect_top)
        inl = labels == lab
        a, b = int((expect_top & inl).sum()), int((expect_top & ~inl).sum())
        c, d = int((~expect_top & inl).sum()), int((~expect_top & ~inl).sum())
        odds, p = fisher_exact([[a, b], [c, d]], alternative="greater")
        row = en[(en.feature == f) & (en.label == lab)].iloc[0]
        assert row.overlap == a and row.n_top == a + b and row.n_label == a + c
        assert row.p == pytest.approx(p, rel=1e-9, abs=1e-300)
        assert row.odds_ratio == pytest.approx(odds) or (
            np.isinf(odds) and np.isinf(row.odds_ratio)
        )


def test_enrichment_skips_dead_features_and_unlabelled_cells():
    m = sp.csr_matrix(np.array([[1.0, 0], [2.0, 0], [0.5, 0], [0.1, 0]]))
    en = celltype_enrichment(m, np.array(["x", "y", "", "x"]), top_fraction=0.5)
    assert en[en.feature == 1].p.isna().all()  # dead: not tested
    assert en[en.feature == 0].n_top.iloc[0] == 2  # cells 0,1 of the 3 labelled ones (ceil(1.5))
    assert set(en.label) == {"x", "y"}


# --- streaming equals a dense computation --------------------------------------------------------


@pytest.mark.parametrize("subset", [False, True])
def test_streaming_equals_dense(tmp_path, subset):
    rng = np.random.default_rng(3)
    n_cells, d, F = 25, 8, 12
    counts = rng.integers(0, 12, n_cells)  # empty cells included
    cell_of = np.repeat(np.arange(n_cells), counts)
    genes = np.array([f"g{j}" for j in rng.integers(0, 9, len(cell_of))], dtype=object)
    x = rng.normal(size=(len(cell_of), d))
    store = write_cell_store(tmp_path / "acts", x, cell_of, genes, n_cells)
    sae = ReluL1SAE(d, F, seed=1)
    with torch.no_grad():
        sae.b_enc.fill_(-0.6)
    mask = (np.arange(n_cells) % 3 != 1) if subset else np.ones(n_cells, bool)
    stats = stream_cell_features(sae, store, 1, cells=mask, chunk=7, cooccurrence=True)
    X = np.load(store.dir / "layer1.npy").astype(np.float32)
    with torch.no_grad():
        Z = sae.encode(torch.from_numpy(X)).numpy().astype(np.float64)
    rows = mask[cell_of]
    Zs, gs, cs = Z[rows], genes[rows], cell_of[rows]
    assert stats.n_tokens == rows.sum() and 0 < (Z > 0).mean() < 0.6
    np.testing.assert_array_equal(stats.fire_count, (Zs > 0).sum(0))
    np.testing.assert_allclose(stats.act_sum, Zs.sum(0), rtol=1e-5)
    # float32 encoder products in other block sizes: 1e-5, not 1e-6 (1.17e-6 seen on some x86 CPUs)
    np.testing.assert_allclose(stats.act_max, Zs.max(0, initial=0), rtol=1e-5, atol=1e-7)
    for gi, g in enumerate(stats.genes):
        sel = gs == g
        assert stats.gene_tokens[gi] == sel.sum()
        np.testing.assert_allclose(
            stats.gene_sum[gi].toarray().ravel(), Zs[sel].sum(0), rtol=1e-5, atol=1e-9
        )
        np.testing.assert_array_equal(stats.gene_fires[gi].toarray().ravel(), (Zs[sel] > 0).sum(0))
    for c in range(n_cells):
        sel = cs == c
        assert stats.cell_tokens[c] == sel.sum()
        np.testing.assert_allclose(
            stats.cell_sum[c].toarray().ravel(), Zs[sel].sum(0), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            stats.cell_max[c].toarray().ravel(), Zs[sel].max(0, initial=0), rtol=1e-5, atol=1e-7
        )
        np.testing.assert_array_equal(stats.cell_fires[c].toarray().ravel(), (Zs[sel] > 0).sum(0))
    B = (Zs > 0).astype(np.int64)
    np.testing.assert_array_equal(stats.cooc, B.T @ B)
    assert stats.cooc_units == len(B)
    c2, n2 = cooccurrence(sp.csr_matrix(B), block=5)
    np.testing.assert_array_equal(c2, B.T @ B)
    assert n2 == len(B)
    # top genes against pandas on the dense codes
    df = pd.DataFrame(Zs).assign(gene=gs).groupby("gene")
    mean, cnt = df.mean(), df.size()
    tg = top_genes(stats, top_n=3, min_count=2)
    for f in range(F):
        m = mean[f][cnt >= 2]
        m = m[m > 0].sort_values(ascending=False, kind="stable")
        got = tg[tg.feature == f]
        np.testing.assert_allclose(got.mean_activation, m.to_numpy()[:3], rtol=1e-5)
    # save / load round trip
    stats.save(tmp_path / "stats")
    back = CellFeatureStats.load(tmp_path / "stats")
    assert (back.cell_sum != stats.cell_sum).nnz == 0 and list(back.genes) == list(stats.genes)
    np.testing.assert_array_equal(back.cooc, stats.cooc)
    if subset:  # cell ids instead of a mask: the same pass
        by_ids = stream_cell_features(sae, store, 1, cells=np.flatnonzero(mask)[::-1], chunk=64)
        # other batch sizes
        np.testing.assert_allclose(by_ids.cell_max.toarray(), stats.cell_max.toarray(), rtol=1e-5)
        np.testing.assert_allclose(
            by_ids.gene_sum.toarray(), stats.gene_sum.toarray(), rtol=1e-5, atol=1e-7
        )


def test_stream_errors(tmp_path):
    store, _ = planted_cells(tmp_path, n_cells=6)
    t = pd.read_parquet(store.dir / "tokens.parquet").drop(columns="gene")
    t.to_parquet(store.dir / "tokens.parquet")
    with pytest.raises(SaeflowError, match=r"tokens.parquet: no column 'gene'"):
        stream_cell_features(identity_sae(16), ActivationStore(store.dir), 1)
    with pytest.raises(SaeflowError, match="d_in=4"):
        stream_cell_features(identity_sae(4), store, 1)


# --- SVD vs SAE -----------------------------------------------------------------------------


class StubSAE:
    """The encode/decode/W_dec surface of load_sae's result (numpy arrays inside)."""

    def __init__(self, w_dec):
        self.W_dec = torch.tensor(w_dec, dtype=torch.float32)

    def encode(self, x):
        return torch.relu(x @ self.W_dec.T)

    def decode(self, z):
        return z @ self.W_dec


def test_svd_comparison_on_low_rank_data(tmp_path):
    rng = np.random.default_rng(0)
    d = 32
    axes = np.linalg.qr(rng.normal(size=(d, 3)))[0].T  # 3 orthonormal directions
    x = rng.normal(size=(4000, 3)) * [5, 3, 2] @ axes + 1.0 + 0.01 * rng.normal(size=(4000, d))
    store = write_cell_store(
        tmp_path / "acts", x, np.arange(4000) // 20, np.array(["g"] * 4000, dtype=object), 200
    )
    sample = sample_activations(store, 1, 1000, seed=1)
    assert sample.shape == (1000, d)
    w = np.vstack([axes, -axes[:1], rng.normal(size=(6, d))])
    sae = StubSAE(w)
    feats, summ = svd_comparison(sae, sample, n_components=3, threshold=0.5)
    assert summ["svd_var_explained"] > 0.999
    assert list(feats.svd_aligned) == [True] * 4 + [False] * 6
    assert feats.novel.sum() == 6 and summ["novel"] == 6
    xc = sample - sample.mean(0)
    xh = sae.decode(sae.encode(torch.from_numpy(sample))).numpy()
    assert summ["sae_var_explained"] == pytest.approx(
        1 - ((sample - xh) ** 2).sum() / (xc**2).sum(), rel=1e-4
    )
    feats2, _ = svd_comparison(
        sae, sample, n_components=3, alive=np.r_[np.zeros(1, bool), np.ones(9, bool)]
    )
    assert not feats2.svd_aligned[0] and not feats2.novel[0]


def test_annotation_by_alignment():
    aligned = np.r_[np.ones(10, bool), np.zeros(20, bool)]
    annotated = np.r_[np.ones(8, bool), np.zeros(2, bool), np.ones(5, bool), np.zeros(15, bool)]
    r = annotation_by_alignment(aligned, annotated)
    assert (r["aligned"], r["aligned_annotated"], r["novel"], r["novel_annotated"]) == (
        10,
        8,
        20,
        5,
    )
    assert r["aligned_rate"] == 0.8 and r["novel_rate"] == 0.25
    assert r["p"] == pytest.approx(fisher_exact([[8, 2], [5, 15]])[1])
    assert r["odds_ratio"] == pytest.approx(8 * 15 / (2 * 5))


# --- cross-layer tracking ----------------------------------------------------------------------


def rotated(w, cos, rng):
    """Each row moved to cosine ``cos`` with itself, towards a random orthogonal direction."""
    u = rng.normal(size=w.shape)
    u -= (u * w).sum(1, keepdims=True) * w
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return cos * w + np.sqrt(1 - cos**2) * u


def test_tracking_identical_random_and_rotated(tmp_path):
    rng = np.random.default_rng(0)
    F, d = 48, 64
    w = rng.normal(size=(F, d))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    feats, counts = track_features({0: w, 1: w.copy(), 2: torch.tensor(w)}, block=10)
    assert (feats["class"] == "persistent").all()
    assert (feats.match == feats.feature).all()
    assert list(feats[feats.layer == 0]["persistence_0.9"].unique()) == [2]
    assert list(feats[feats.layer == 1]["persistence_0.9"].unique()) == [1]
    assert list(counts.persistent) == [F, F] and list(counts.transient) == [0, 0]
    # random decoders: nothing matches at 0.7
    feats, counts = track_features({3: w, 4: rng.normal(size=(F, d))})
    assert (feats["class"] == "transient").all() and (feats["persistence_0.7"] == 0).all()
    # partially rotated (cos 0.8): matched at 0.7 but not at 0.9
    feats, counts = track_features([(5, w), (6, rotated(w, 0.8, rng))])
    assert (feats["class"] == "moderate").all() and (feats.match == feats.feature).all()
    assert np.allclose(feats.cosine, 0.8, atol=1e-5) and counts.moderate.iloc[0] == F


def test_tracking_chains_dead_features_and_sae_dirs(tmp_path):
    rng = np.random.default_rng(1)
    F, d = 20, 32
    w0 = rng.normal(size=(F, d))
    w0 /= np.linalg.norm(w0, axis=1, keepdims=True)
    w1 = w0[::-1].copy()  # a permutation: matches are reversed
    w2 = np.vstack([w1[:10], rng.normal(size=(10, d))])  # half persist one more layer
    dirs = {}
    for layer, w in enumerate([w0, w1, w2]):
        sae = ReluL1SAE(d, F)
        with torch.no_grad():
            sae.W_dec.copy_(torch.tensor(w, dtype=torch.float32))
        sae.save(tmp_path / f"sae{layer}")
        dirs[layer] = tmp_path / f"sae{layer}"
    alive = {0: np.r_[np.zeros(1, bool), np.ones(F - 1, bool)]}
    feats, counts = track_features(dirs, alive=alive)
    l0 = feats[feats.layer == 0].set_index("feature")
    assert l0.loc[0, "class"] == "dead" and l0.loc[0, "persistence_0.9"] == 0
    assert l0.loc[1, "match"] == F - 2
    # feature f of layer 0 -> F-1-f of layer 1, which persists iff F-1-f < 10
    expect = np.where(F - 1 - np.arange(1, F) < 10, 2, 1)
    np.testing.assert_array_equal(l0.loc[1:, "persistence_0.9"].to_numpy(), expect)
    assert counts.dead.iloc[0] == 1
    with pytest.raises(SaeflowError, match="at least two layers"):
        track_features({0: w0})


# --- co-activation modules ------------------------------------------------------------------------


def planted_blocks(n=3000, F=30, seed=0):
    rng = np.random.default_rng(seed)
    b = rng.random((n, F)) < 0.05
    for block in (range(0, 6), range(6, 12)):
        on = rng.random(n) < 0.1
        b[:, list(block)] = on[:, None] & (rng.random((n, len(block))) < 0.9)
    return sp.csr_matrix(b)


def test_pmi_modules_recover_planted_blocks():
    c, n = cooccurrence(planted_blocks(), block=700)
    edges = pmi_edges(c, n, min_count=5)
    assert (edges.pmi > 0).all() and (edges.a < edges.b).all()
    modules, membership, edges = coactivation_modules(c, n, min_count=5, pmi_threshold=1.0, seed=0)
    assert len(modules) == 2 and list(modules["size"]) == [6, 6]
    found = {frozenset(map(int, s.split(","))) for s in modules.features}
    assert found == {frozenset(range(6)), frozenset(range(6, 12))}
    assert (membership.module.to_numpy()[12:] == -1).all()
    again = coactivation_modules(c, n, min_count=5, pmi_threshold=1.0, seed=0)[0]
    pd.testing.assert_frame_equal(modules, again)
    terms = pd.DataFrame(
        {
            "feature": [0, 1, 2, 3, 6, 7, 8, 0, 13],
            "term": ["T cell"] * 4 + ["B cell"] * 3 + ["NK", "T cell"],
        }
    )
    mt = module_terms(membership, terms).set_index("module")
    blk = {m: int(modules.features[m].split(",")[0]) for m in modules.module}
    t_mod = [m for m, f0 in blk.items() if f0 == 0][0]
    assert mt.loc[t_mod, "term"] == "T cell" and mt.loc[t_mod, "count"] == 4
    assert mt.loc[1 - t_mod, "term"] == "B cell" and mt.loc[1 - t_mod, "fraction"] == pytest.approx(
        0.5
    )


# --- perturbation response ---------------------------------------------------------------------


def perturb_data(rng, n_ctrl=300, n_t=60, F=40, targets=("TF1", "G2", "G3"), shift=True):
    pert = np.array(["non-targeting"] * n_ctrl + [t for t in targets for _ in range(n_t)])
    n = len(pert)
    acts = np.where(rng.random((n, F)) < 0.3, rng.exponential(1.0, (n, F)), 0.0)
    if shift:
        m = pert == "TF1"
        acts[np.ix_(m, np.arange(10))] = np.where(
            rng.random((m.sum(), 10)) < 0.8, 1 + rng.exponential(1.0, (m.sum(), 10)), 0
        )
        acts[np.ix_(m, np.arange(10, 15))] = np.where(
            rng.random((m.sum(), 5)) < 0.01, rng.exponential(1.0, (m.sum(), 5)), 0
        )
    return sp.csr_matrix(acts), pert


def test_perturbation_shift_found_with_sign():
    rng = np.random.default_rng(0)
    acts, pert = perturb_data(rng)
    res = perturbation_response(acts, pert, "non-targeting", min_cells=10)
    assert set(res.target) == {"TF1", "G2", "G3"} and len(res) == 3 * 40
    tf = res[res.target == "TF1"].set_index("feature")
    assert (
        (tf.loc[0:9, "q"] < 0.05).all()
        and (tf.loc[0:9, "rank_biserial"] > 0).all()
        and (tf.loc[0:9, "diff"] > 0).all()
    )
    assert (tf.loc[10:14, "q"] < 0.05).all() and (tf.loc[10:14, "rank_biserial"] < 0).all()
    assert (tf.loc[0:9, "ci_low"] > 0).all() and (tf.loc[10:14, "ci_high"] < 0).all()
    null = res[(res.target != "TF1") | (res.feature >= 15)]
    assert (null.q < 0.05).sum() <= 2
    # the vectorised call equals scipy one feature at a time
    from scipy.stats import mannwhitneyu

    x, y = acts[pert == "TF1"].toarray(), acts[pert == "non-targeting"].toarray()
    for f in (0, 12, 30):
        r = mannwhitneyu(x[:, f], y[:, f], alternative="two-sided")
        assert tf.loc[f, "p"] == pytest.approx(r.pvalue) and tf.loc[f, "U"] == r.statistic
    # dense input, too few cells, control subsample
    small = perturbation_response(acts.toarray(), pert, "non-targeting", min_cells=100)
    assert len(small) == 0
    sub = perturbation_response(acts, pert, "non-targeting", max_control_cells=50, targets=["TF1"])
    assert (sub.n_control == 50).all()
    with pytest.raises(SaeflowError, match="control cells"):
        perturbation_response(acts, pert, "ctrl")


def test_perturbation_null_discoveries_at_or_below_fdr():
    rng = np.random.default_rng(1)
    any_disc, ps = [], []
    for _ in range(30):
        acts, pert = perturb_data(rng, n_ctrl=120, n_t=30, F=30, shift=False)
        res = perturbation_response(acts, pert, "non-targeting")
        any_disc.append((res.q < 0.05).any())
        ps.append(res.p.to_numpy())
    ps = np.concatenate(ps)
    # under the global null, FDR = P(any discovery) <= 0.05 (BH)
    assert np.mean(any_disc) <= 0.1
    assert abs((ps < 0.05).mean() - 0.05) < 0.02 and abs(ps.mean() - 0.5) < 0.05


# --- regulatory logic --------------------------------------------------------------------------


def test_regulatory_logic_planted_tf():
    rng = np.random.default_rng(2)
    acts, pert = perturb_data(rng)
    res = perturbation_response(acts, pert, "non-targeting")
    pool = [f"g{i}" for i in range(200)]
    fg = {f: set(rng.choice(pool, 5, replace=False)) for f in range(40)}
    for f in range(15):  # the features TF1 moves carry its targets among their top genes
        fg[f] |= {"T1", "T2"}
    trrust = pd.DataFrame(
        {
            "tf": ["TF1", "TF1", "TF1", "G2", "G2", "NOTPERTURBED"],
            "target": ["T1", "T2", "T3", "g1", "g2", "g3"],
        }
    )
    fg_df = pd.DataFrame([(f, g) for f, gs in fg.items() for g in gs], columns=["feature", "gene"])
    out = regulatory_logic(res, fg_df, trrust, n_perm=2000, seed=0).set_index("tf")
    assert list(out.index) == ["G2", "TF1"]
    assert out.loc["TF1", "overlap"] == 15 and out.loc["TF1", "p"] < 0.01
    assert out.loc["TF1", "p"] == pytest.approx(1 / 2001) and out.loc["TF1", "p_exact"] < 1e-6
    assert np.isnan(out.loc["G2", "p"])  # G2 has no responding feature: not tested
    with pytest.raises(SaeflowError, match="column 'tf'"):
        regulatory_logic(res, fg_df, trrust.rename(columns={"tf": "TF"}))


def test_regulatory_logic_random_tfs_roughly_uniform():
    rng = np.random.default_rng(3)
    n_tf, F = 300, 150
    pool = np.array([f"g{i}" for i in range(60)])
    fg = {f: set(rng.choice(pool, 4, replace=False)) for f in range(F)}
    rows = []
    for t in range(n_tf):
        q = np.where(rng.random(F) < 0.2, 0.001, 0.5)
        rows.append(pd.DataFrame({"target": f"TF{t}", "feature": np.arange(F), "p": q, "q": q}))
    response = pd.concat(rows, ignore_index=True)
    trrust = pd.DataFrame(
        [(f"TF{t}", g) for t in range(n_tf) for g in rng.choice(pool, 3, replace=False)],
        columns=["tf", "target"],
    )
    out = regulatory_logic(response, fg, trrust, n_perm=1000, seed=0)
    p = out.p.dropna().to_numpy()
    assert len(p) > 250
    for a in (0.05, 0.1, 0.25, 0.5):
        assert (p <= a).mean() <= a + 0.04
    assert 0.4 < p.mean() < 0.65 and (out.q.dropna() < 0.05).sum() == 0
    # the permutation p-value approximates the exact hypergeometric tail
    assert np.corrcoef(out.p.dropna(), out.p_exact.dropna())[0, 1] > 0.98


# --- summary and helpers
# ---------------------------------------------------------------------------


def test_layer_summary_table():
    feats = pd.DataFrame({"feature": range(6), "alive": [True] * 5 + [False]})
    enr = pd.DataFrame(
        {
            "feature": [0, 0, 1, 2, 5],
            "library": ["GO_BP", "KEGG", "GO_BP", "KEGG", "GO_BP"],
            "term": list("abcde"),
            "q": [0.01, 0.02, 0.2, 0.001, 0.0001],
        }
    )
    modules = pd.DataFrame({"module": [0, 1], "size": [3, 2], "features": ["0,1,2", "3,4"]})
    tracking = pd.DataFrame(
        {
            "feature": range(6),
            "class": ["persistent", "moderate", "moderate", "transient", "transient", "dead"],
        }
    )
    row = layer_summary(
        4,
        feats,
        enrichment=enr,
        libraries=["GO_BP", "KEGG", "Reactome"],
        modules=modules,
        tracking=tracking,
    )
    # 0 and 2 (5 is dead, 1 has q=0.2)
    assert row["Features"] == 6 and row["Alive"] == 5 and row["Annotated"] == 2
    assert row["Ann%"] == pytest.approx(40.0) and row["Enrichments"] == 3
    assert (row["GO_BP"], row["KEGG"], row["Reactome"]) == (1, 2, 0)
    assert (row["Modules"], row["Persistent"], row["Moderate"], row["Transient"]) == (2, 1, 2, 2)
    last = layer_summary(5, feats)
    table = summary_table([last, row])
    assert list(table.columns) == [
        "layer",
        "Features",
        "Alive",
        "Annotated",
        "Ann%",
        "Enrichments",
        "GO_BP",
        "KEGG",
        "Reactome",
        "Modules",
        "Persistent",
        "Moderate",
        "Transient",
    ]
    assert list(table.layer) == [4, 5] and np.isnan(table.Persistent.iloc[1])
    with pytest.raises(SaeflowError, match="column 'q'"):
        layer_summary(4, feats, enrichment=enr.drop(columns="q"))


def test_bh_matches_scipy_and_skips_nan():
    from scipy.stats import false_discovery_control

    p = np.random.default_rng(0).random(50) ** 3
    np.testing.assert_allclose(bh(p), false_discovery_control(p, method="bh"))
    q = bh(np.r_[p[:5], np.nan].reshape(2, 3))
    assert q.shape == (2, 3) and np.isnan(q[1, 2])
    np.testing.assert_allclose(q.ravel()[:5], false_discovery_control(p[:5], method="bh"))
    assert hypergeom.sf(-1, 10, 3, 2) == pytest.approx(1.0)


def test_gene_sets_and_networks_share_one_bh_family():
    """The q of a gene-set test depends on the network tests of the layer too (one family), and the
    zero-overlap tests that are not stored still count: same as BH over every p with those at 1."""
    from statsmodels.stats.multitest import multipletests

    from saeflow.cells.analysis import joint_bh

    rng = np.random.default_rng(0)
    ora = pd.DataFrame({"feature": np.arange(30), "p": rng.uniform(0, 0.02, 30) ** 2})
    nets = {
        "trrust": pd.DataFrame({"feature": np.arange(50), "p": rng.uniform(0, 1, 50)}),
        "string": pd.DataFrame(
            {"feature": np.arange(50), "p": np.r_[np.full(5, 1e-4), rng.uniform(0, 1, 45)]}
        ),
    }
    unstored = 400
    family = joint_bh(ora, 30 + unstored, nets)
    assert family == 30 + unstored + 100
    allp = np.concatenate([ora.p, nets["trrust"].p, nets["string"].p, np.ones(unstored)])
    ref = multipletests(allp, method="fdr_bh")[1]
    np.testing.assert_allclose(ora.q, ref[:30], rtol=1e-12)
    np.testing.assert_allclose(nets["trrust"].q, ref[30:80], rtol=1e-12)
    np.testing.assert_allclose(nets["string"].q, ref[80:130], rtol=1e-12)
    # larger than the per-network BH would give: the family is bigger
    alone = multipletests(nets["string"].p, method="fdr_bh")[1]
    assert (nets["string"].q.to_numpy() >= alone - 1e-15).all() and (
        nets["string"].q.to_numpy() > alone
    ).any()

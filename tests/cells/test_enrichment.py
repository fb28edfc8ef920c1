"""saeflow.cells.enrichment: gene-set over-representation and network edge enrichment of SAE
features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from saeflow.cells import enrichment as en
from saeflow.utils import SaeflowError

GENES = np.array([f"G{i:04d}" for i in range(1200)], dtype=object)


def _random_sets(rng, n_sets, lo=15, hi=120, genes=GENES):
    return {
        f"T{j:03d}": list(rng.choice(genes, rng.integers(lo, hi), replace=False))
        for j in range(n_sets)
    }


def _random_hits(rng, n_features, size=40, genes=GENES):
    return {f"f{i}": list(rng.choice(genes, size, replace=False)) for i in range(n_features)}


def _bh_reference(p):
    """BH step-up from its definition (used when statsmodels is absent)."""
    p = np.asarray(p, float)
    m = p.size
    q = np.empty(m)
    for i in range(m):
        # q_i = min over j with p_j >= p_i of p_j * m / rank_j
        ranks = (p[None, :] <= p[:, None]).sum(axis=1)  # rank with ties at the largest rank
        q[i] = min(1.0, np.min(p[p >= p[i]] * m / ranks[p >= p[i]]))
    return q


def _fdr_bh(p):
    try:
        from statsmodels.stats.multitest import multipletests
    except ImportError:  # pragma: no cover - statsmodels is in the dev venv
        return _bh_reference(p)
    return multipletests(p, method="fdr_bh")[1]


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------


def test_read_gmt_roundtrip_and_errors(tmp_path):
    import gseapy

    sets = {"A": ["G1", "G2", "G3"], "B": ["G2", "G4"]}
    gseapy.parser.write_gmt(sets, str(tmp_path / "lib.gmt"), "x")
    assert en.read_gmt(tmp_path / "lib.gmt") == sets

    with pytest.raises(SaeflowError, match="not found"):
        en.read_gmt(tmp_path / "missing.gmt")
    (tmp_path / "empty.gmt").write_text("\n\n")
    with pytest.raises(SaeflowError, match=r"empty\.gmt: no gene set"):
        en.read_gmt(tmp_path / "empty.gmt")
    (tmp_path / "bad.gmt").write_text("A\tdesc\tG1\tG2\nB G3 G4\n")
    with pytest.raises(SaeflowError, match=r"bad\.gmt: line 2"):
        en.read_gmt(tmp_path / "bad.gmt")
    (tmp_path / "nogene.gmt").write_text("A\tdesc\t\t\n")
    with pytest.raises(SaeflowError, match=r"nogene\.gmt: line 1"):
        en.read_gmt(tmp_path / "nogene.gmt")
    (tmp_path / "dup.gmt").write_text("A\td\tG1\nA\td\tG2\n")
    with pytest.raises(SaeflowError, match="twice"):
        en.read_gmt(tmp_path / "dup.gmt")
    (tmp_path / "lib.txt").write_text("A\td\tG1\n")
    with pytest.raises(SaeflowError, match=r"lib\.txt: expected a \.gmt"):
        en.read_gmt(tmp_path / "lib.txt")


def test_read_edge_tables(tmp_path):
    from saeflow.utils import write_table

    write_table(
        pd.DataFrame(
            {
                "source": ["TF1", "TF1", "TF2"],
                "target": ["A", "B", "A"],
                "mode": ["Activation", "Repression", "Unknown"],
                "pmids": ["1", "2", "3"],
            }
        ),
        tmp_path / "trrust.tsv",
    )
    tr = en.read_trrust(tmp_path / "trrust.tsv")
    assert en.trrust_gene_sets(tr) == {"TF1": ["A", "B"], "TF2": ["A"]}
    assert en.trrust_gene_sets(tr, by_mode=True)["TF1 Repression"] == ["B"]
    write_table(
        pd.DataFrame({"source": ["A", "A"], "target": ["B", "C"], "combined_score": [900, 400]}),
        tmp_path / "string.tsv",
    )
    assert len(en.read_string(tmp_path / "string.tsv", min_score=700)) == 1
    with pytest.raises(SaeflowError, match="combined_score"):
        en.read_string(tmp_path / "trrust.tsv")
    with pytest.raises(SaeflowError, match="no edge with combined_score >= 950"):
        en.read_string(tmp_path / "string.tsv", min_score=950)


# --------------------------------------------------------------------------------------
# the statistics
# --------------------------------------------------------------------------------------


def test_hypergeom_sf_equals_scipy():
    rng = np.random.default_rng(0)
    m = 4000
    N = rng.integers(1, 40000, m)
    K = rng.integers(0, N + 1)
    n = np.minimum(rng.integers(0, N + 1), rng.integers(0, 800, m))
    lo, hi = np.maximum(0, n + K - N), np.minimum(n, K)
    k = rng.integers(lo - 1, hi + 2)
    near = rng.random(m) < 0.5  # half of them around the mean, where both tails matter
    k[near] = np.clip(
        (n * K // np.maximum(N, 1))[near] + rng.integers(-3, 8, near.sum()), lo[near], hi[near]
    )
    ours = en.hypergeom_sf(k, N, K, n)
    ref = stats.hypergeom.sf(k - 1, N, K, n)
    normal = ref > 1e-300
    np.testing.assert_allclose(ours[normal], ref[normal], rtol=1e-8, atol=0)
    assert np.all(ours[~normal] < 1e-290)
    assert np.all(ours[k <= lo] == 1.0) and np.all(ours[k > hi] == 0.0)


def test_bh_equals_statsmodels_and_counts_unstored_tests():
    rng = np.random.default_rng(1)
    p = np.round(rng.random(500) ** 3, 3)  # ties included
    np.testing.assert_allclose(en.bh(p), _fdr_bh(p), rtol=1e-12)
    # a family of 800 with 300 tests at p = 1 that are not stored
    full = np.concatenate([p, np.ones(300)])
    np.testing.assert_allclose(en.bh(p, m=800), _fdr_bh(full)[:500], rtol=1e-12)
    with pytest.raises(SaeflowError, match="smaller than"):
        en.bh(p, m=10)


def test_agrees_with_gseapy_enrich():
    """Same p-values (relative 1e-8), odds ratios and overlap genes as gseapy.enrich with a
    background."""
    import gseapy

    rng = np.random.default_rng(2)
    sets = _random_sets(rng, 120, lo=5, hi=150)
    background = list(GENES[:1000])  # 200 genes outside: sets and hits are intersected with it
    hits = _random_hits(rng, 6, size=60)
    # one planted, so small p-values are compared too
    hits["f0"] = sets["T007"][:25] + hits["f0"][:35]
    df = en.overrepresentation(
        hits, {"lib": sets}, background, min_size=1, max_size=10_000, genes_q_max=None
    )
    compared = 0
    for f, genes in hits.items():
        res = gseapy.enrich(
            gene_list=genes,
            gene_sets=sets,
            background=background,
            outdir=None,
            cutoff=1,
            no_plot=True,
        ).res2d.set_index("Term")
        ours = df[df.feature == f].assign(term=lambda d: d.term.astype(str)).set_index("term")
        assert sorted(res.index) == sorted(ours.index)  # the same terms have k > 0
        ours = ours.loc[res.index]
        np.testing.assert_allclose(ours.p, res["P-value"], rtol=1e-8, atol=0)
        np.testing.assert_allclose(ours.odds_ratio, res["Odds Ratio"], rtol=1e-10)
        assert [f"{k}/{K}" for k, K in zip(ours.k, ours.K)] == list(res.Overlap)
        assert [set(g.split(";")) for g in ours.overlap_genes] == [
            set(g.split(";")) for g in res.Genes
        ]
        # and gseapy's own statistics function
        terms, pvals, _, x, _, _ = gseapy.stats.calc_pvalues(
            set(genes), sets, background=set(background)
        )
        np.testing.assert_allclose(ours.loc[list(terms)].p, pvals, rtol=1e-8, atol=0)
        compared += len(res)
    assert compared > 300
    assert df.p.min() < 1e-12


def test_planted_enrichment_found_with_its_genes():
    rng = np.random.default_rng(3)
    sets = _random_sets(rng, 200)
    hits = _random_hits(rng, 50)
    planted = sets["T042"][:12]
    hits["f7"] = planted + [g for g in hits["f7"] if g not in sets["T042"]][:28]
    df = en.overrepresentation(hits, {"lib": sets}, GENES)
    assert list(df.columns) == en.ORA_COLUMNS
    top = df.iloc[0]
    assert (top.feature, top.term) == ("f7", "T042")
    assert top.q < 0.05 and top.k == 12 and top.n == 40
    assert top.overlap_genes == ";".join(sorted(planted))
    assert top.K == len(sets["T042"]) and top.N == len(GENES)
    assert np.isclose(top.expected, 40 * top.K / len(GENES)) and np.isclose(
        top.fold, 12 / top.expected
    )
    # odds ratio: Haldane–Anscombe (0.5 in every cell)
    a, b, c, d = 12, top.K - 12, 40 - 12, len(GENES) - top.K - 40 + 12
    assert np.isclose(top.odds_ratio, (a + 0.5) * (d + 0.5) / ((b + 0.5) * (c + 0.5)))
    # overlap genes are only filled for significant rows
    assert df[df.q > 0.05].overlap_genes.isna().all()
    # with q_max only significant rows come back, the family is the same
    sig = en.overrepresentation(hits, {"lib": sets}, GENES, q_max=0.05)
    assert sig.attrs["family_size"] == df.attrs["family_size"] and not sig.attrs["complete"]
    assert set(zip(sig.feature, sig.term)) == set(
        zip(df[df.q <= 0.05].feature, df[df.q <= 0.05].term)
    )


def _overlaps_by_sets(hits, sets, background):
    """k, n, K, N for every (feature, set) pair by Python sets: an independent path."""
    bg = set(background)
    rows = []
    for f, genes in hits.items():
        h = set(genes) & bg
        for t, s in sets.items():
            s = set(s) & bg
            rows.append((f, t, len(h & s), len(h), len(s)))
    return pd.DataFrame(rows, columns=["feature", "term", "k", "n", "K"])


def test_family_counts_k0_tests_and_size_filter_after_background():
    rng = np.random.default_rng(4)
    background = GENES[:800]
    outside = GENES[800:]
    sets = _random_sets(rng, 30, lo=20, hi=60, genes=background)
    # 8 of 20 genes in the background: dropped at min_size=10 although the set has 20 genes
    sets["small_in_bg"] = list(background[:8]) + list(outside[:12])
    # 12 of 30 in the background: kept, K = 12
    sets["kept_12"] = list(background[100:112]) + list(outside[20:38])
    # 350 of 600 in the background: kept at max_size=400 although the set has 600 genes
    sets["big"] = list(background[200:550]) + list(outside[:250])
    hits = _random_hits(rng, 25, size=30)
    hits["f0"] = list(background[100:110]) + list(background[600:620])
    df = en.overrepresentation(
        hits, {"lib": sets}, background, min_size=10, max_size=400, genes_q_max=None
    )
    terms = set(df.term.astype(str))
    assert "small_in_bg" not in terms and {"kept_12", "big"} <= terms
    assert df[df.term == "kept_12"].K.unique().tolist() == [12]
    assert df[df.term == "big"].K.unique().tolist() == [350]
    n_tested_sets = 32
    assert df.attrs["family_size"] == 25 * n_tested_sets == df.family_size.iloc[0]
    assert (df.k > 0).all() and len(df) < 25 * n_tested_sets  # k = 0 rows are not returned ...

    # ... but they are in the family: q equals BH over every pair, k = 0 pairs at p = 1
    full = _overlaps_by_sets(
        hits, {t: s for t, s in sets.items() if t != "small_in_bg"}, background
    )
    assert len(full) == 25 * n_tested_sets and (full.k == 0).sum() > 0
    full["p"] = np.where(
        full.k > 0, stats.hypergeom.sf(full.k - 1, len(background), full.K, full.n), 1.0
    )
    full["q"] = _fdr_bh(full.p.to_numpy())
    merged = full[full.k > 0].merge(
        df.assign(feature=df.feature.astype(str), term=df.term.astype(str)),
        on=["feature", "term"],
        suffixes=("", "_ours"),
    )
    assert len(merged) == len(df)
    assert (merged.k == merged.k_ours).all() and (merged.n == merged.n_ours).all()
    np.testing.assert_allclose(merged.p_ours, merged.p, rtol=1e-8)
    np.testing.assert_allclose(merged.q_ours, merged.q, rtol=1e-8)
    # hits outside the background do not count towards n
    hits2 = {"x": list(background[:20]) + list(outside[:20])}
    assert en.overrepresentation(
        hits2, {"lib": sets}, background, min_size=10, max_size=400
    ).n.unique().tolist() == [20]


def test_null_calibration_uniform_randomised_p_and_fdp():
    """Random hits and random sets: every test is null.

    Hypergeometric p-values are discrete; the randomised p-value P(X > k) + U P(X = k) is exactly
    uniform under the null, so a KS test of it checks the whole null distribution (k = 0 tests
    included). BH's false discovery proportion, averaged over replicates with planted true signals,
    stays at or below the nominal 5%.
    """
    rng = np.random.default_rng(5)
    background = GENES[:1000]
    rand_p, raw_p = [], []
    fdps, any_null_discovery = [], []
    for rep in range(120):
        sets = _random_sets(rng, 25, lo=15, hi=80, genes=background)
        hits = _random_hits(rng, 20, size=40, genes=background)
        # 4 features with a true enrichment of one set each (the alternative)
        truth = set()
        for i, t in enumerate(["T000", "T001", "T002", "T003"]):
            hits[f"f{i}"] = (
                list(rng.choice(sets[t], 8, replace=False))
                + [g for g in hits[f"f{i}"] if g not in sets[t]][:32]
            )
            truth.add((f"f{i}", t))
        df = en.overrepresentation(hits, {"lib": sets}, background, min_size=15, max_size=500)
        assert df.attrs["family_size"] == 20 * 25
        disc = df[df.q <= 0.05]
        false = sum(
            (f, t) not in truth for f, t in zip(disc.feature.astype(str), disc.term.astype(str))
        )
        fdps.append(false / max(len(disc), 1))
        # the null tests: every pair of the 16 random features, k = 0 included
        full = _overlaps_by_sets({f: hits[f] for f in list(hits)[4:]}, sets, background)
        N = len(background)
        k, n, K = full.k.to_numpy(), full.n.to_numpy(), full.K.to_numpy()
        p_ge = en.hypergeom_sf(k, N, K, n)
        p_gt = en.hypergeom_sf(k + 1, N, K, n)
        rand_p.append(p_gt + rng.random(k.size) * (p_ge - p_gt))
        raw_p.append(p_ge)
        null_only = en.bh(p_ge)
        any_null_discovery.append((null_only <= 0.05).any())
    rand_p, raw_p = np.concatenate(rand_p), np.concatenate(raw_p)
    assert stats.kstest(rand_p, "uniform").pvalue > 0.001
    for a in (0.01, 0.05, 0.1):  # raw p-values are conservative (super-uniform)
        assert (raw_p <= a).mean() <= a + 3 * np.sqrt(a * (1 - a) / raw_p.size)
    assert np.mean(fdps) <= 0.05 + 0.03
    assert np.mean(any_null_discovery) <= 0.05 + 0.05  # complete null: FDR = P(any discovery)


def test_pool_libraries_and_pool_results(tmp_path):
    import gseapy

    rng = np.random.default_rng(6)
    a, b = _random_sets(rng, 40), _random_sets(rng, 30)
    gseapy.parser.write_gmt(a, str(tmp_path / "a.gmt"), "a")
    libs = en.pool_libraries({"A": tmp_path / "a.gmt", "B": b})
    hits = _random_hits(rng, 15)
    hits["f1"] = a["T003"][:10] + hits["f1"][:30]
    one = en.overrepresentation(hits, libs, GENES)
    assert one.attrs["family_size"] == 15 * 70 and set(one.library) == {"A", "B"}
    sep = [en.overrepresentation(hits, {name: libs[name]}, GENES) for name in ("A", "B")]
    pooled = en.pool_results(sep)
    assert pooled.attrs["family_size"] == 15 * 70
    key = ["feature", "library", "term"]
    m = one.astype({c: str for c in key}).merge(pooled.astype({c: str for c in key}), on=key)
    assert len(m) == len(one) == len(pooled)
    np.testing.assert_allclose(m.q_x, m.q_y, rtol=1e-12)
    with pytest.raises(SaeflowError, match="not complete"):
        en.pool_results([en.overrepresentation(hits, {"A": a}, GENES, q_max=0.05)])


def test_hit_matrix_input_and_top_hits():
    rng = np.random.default_rng(7)
    sets = _random_sets(rng, 20)
    hits = _random_hits(rng, 5)
    col = {g: i for i, g in enumerate(GENES)}
    M = sp.lil_matrix((5, len(GENES)), dtype=bool)
    for i, genes in enumerate(hits.values()):
        for g in genes:
            M[i, col[g]] = True
    by_dict = en.overrepresentation(hits, {"l": sets}, GENES, genes_q_max=None)
    by_mat = en.overrepresentation(
        M.tocsr(), {"l": sets}, GENES, universe=GENES, features=list(hits), genes_q_max=None
    )
    pd.testing.assert_frame_equal(
        by_dict.astype({"feature": str, "term": str}), by_mat.astype({"feature": str, "term": str})
    )
    scores = rng.random((3, 10)) - 0.5
    scores[2] = -1.0
    top = en.top_hits(scores, 4).toarray()
    assert top.sum(axis=1).tolist()[:2] == [min(4, (scores[i] > 0).sum()) for i in range(2)]
    assert top[2].sum() == 0
    for i in range(2):  # the hits are the highest positive scores
        assert scores[i][top[i]].min() >= np.sort(scores[i])[-4]


def test_clear_errors():
    sets = {"A": list(GENES[:20])}
    with pytest.raises(SaeflowError, match="background is empty"):
        en.overrepresentation({"f": ["G0001"]}, {"l": sets}, [])
    with pytest.raises(SaeflowError, match="not in the gene universe: NOPE"):
        en.overrepresentation({"f": ["G0001", "NOPE"]}, {"l": sets}, GENES, universe=GENES)
    with pytest.raises(SaeflowError, match="7 gene columns but the universe has 1200"):
        en.overrepresentation(np.ones((2, 7), bool), {"l": sets}, GENES, universe=GENES)
    with pytest.raises(SaeflowError, match="needs its universe"):
        en.overrepresentation(np.ones((2, 7), bool), {"l": sets}, GENES)
    with pytest.raises(SaeflowError, match="no gene set has between"):
        en.overrepresentation({"f": ["G0001"]}, {"l": sets}, GENES, min_size=50)
    with pytest.raises(SaeflowError, match="no gene of the universe is in the background"):
        en.overrepresentation({"f": ["G0001"]}, {"l": sets}, ["ENSG1", "ENSG2"])
    with pytest.raises(SaeflowError, match="universe names a gene more than once"):
        en.overrepresentation({"f": ["G0001"]}, {"l": sets}, GENES, universe=["G0001", "G0001"])
    with pytest.raises(SaeflowError, match="no network edge joins two background genes"):
        en.edge_enrichment(
            {"f": ["G0001"]},
            pd.DataFrame({"source": ["X"], "target": ["Y"]}),
            GENES,
            directed=False,
        )


# --------------------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------------------


def _random_graph(rng, n_nodes=300, n_edges=1200, hubs=5):
    """An undirected random graph with a few hubs (edge table of gene names)."""
    w = np.ones(n_nodes)
    w[:hubs] = 40.0  # G0000..G0004 are hubs
    w /= w.sum()
    a = rng.choice(n_nodes, 3 * n_edges, p=w)
    b = rng.choice(n_nodes, 3 * n_edges, p=w)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = np.unique((lo * n_nodes + hi)[lo != hi])
    key = rng.permutation(key)[:n_edges]
    return pd.DataFrame({"source": GENES[key // n_nodes], "target": GENES[key % n_nodes]})


def test_degree_preserving_swaps_keep_every_degree():
    rng = np.random.default_rng(8)
    for directed in (False, True):
        edges = _random_graph(rng)
        bg, u, v = en.network_on_background(edges, GENES[:300], directed=directed)
        nu, nv = en.degree_preserving_swaps(
            u, v, len(bg), directed=directed, rng=np.random.default_rng(0)
        )
        if directed:
            assert (
                np.bincount(nu, minlength=300) == np.bincount(u, minlength=300)
            ).all()  # out-degree
            assert (
                np.bincount(nv, minlength=300) == np.bincount(v, minlength=300)
            ).all()  # in-degree
            keys = nu * 300 + nv
        else:
            deg = np.bincount(np.r_[u, v], minlength=300)
            assert (np.bincount(np.r_[nu, nv], minlength=300) == deg).all()
            assert (nu < nv).all()
            keys = nu * 300 + nv
        assert (nu != nv).all() and np.unique(keys).size == keys.size  # simple graph
        # well mixed: the rewired graph shares no more edges with the observed one than two
        # independent rewirings share with each other (hub-hub edges are in almost every rewiring)
        other = en.degree_preserving_swaps(
            u, v, len(bg), directed=directed, rng=np.random.default_rng(1)
        )
        shared_obs = np.isin(keys, u * 300 + v).mean()
        shared_null = np.isin(keys, other[0] * 300 + other[1]).mean()
        assert shared_obs < shared_null + 0.03 and shared_obs < 0.3
        again = en.degree_preserving_swaps(
            u, v, len(bg), directed=directed, rng=np.random.default_rng(0)
        )
        assert (again[0] == nu).all() and (again[1] == nv).all()  # seeded


def test_edge_enrichment_clique_vs_random_vs_single_hub_edge():
    rng = np.random.default_rng(9)
    edges = _random_graph(rng)
    background = GENES[:300]
    clique = list(GENES[100:110])
    extra = pd.DataFrame(
        [(a, b) for i, a in enumerate(clique) for b in clique[i + 1 :]],
        columns=["source", "target"],
    )
    edges = pd.concat([edges, extra], ignore_index=True)
    hits = {"clique": clique + list(GENES[200:210])}
    for i in range(6):
        hits[f"random{i}"] = list(rng.choice(background[5:], 20, replace=False))
    # two connected hubs among the hits: one edge, which hub degrees make common by chance
    hub_edge = edges[(edges.source.isin(GENES[:5])) & (edges.target.isin(GENES[:5]))].iloc[0]
    others = [g for g in rng.choice(background[5:], 40, replace=False)]
    hits["one_hub_edge"] = [hub_edge.source, hub_edge.target] + others[:18]
    df = en.edge_enrichment(
        hits, edges, background, directed=False, network="toy", n_perm=299, seed=1
    )
    assert list(df.columns) == en.EDGE_COLUMNS
    by = df.set_index("feature")
    assert df.attrs["family_size"] == len(hits) == by.family_size.iloc[0]
    assert by.loc["clique", "edges"] >= 45 and by.loc["clique", "q"] < 0.05
    assert by.loc["clique", "p"] == pytest.approx(1 / 300)
    assert set(by.loc["clique", "edge_list"].split(";")) >= {
        f"{a}-{b}" for i, a in enumerate(clique) for b in clique[i + 1 :]
    }
    assert by.loc["one_hub_edge", "edges"] >= 1 and by.loc["one_hub_edge", "q"] > 0.05
    assert by.loc["one_hub_edge", "null_mean"] > 0.5
    rand = by.loc[[f"random{i}" for i in range(6)]]
    assert (rand.q > 0.05).all() and rand.edge_list.isna().all()
    # the +1 correction: p is never below 1/(1 + n_perm); no edge -> p = 1
    assert (by.p >= 1 / 300).all() and (by.loc[by.edges == 0, "p"] == 1).all()
    # the same nulls passed precomputed give the same table
    bg, u, v = en.network_on_background(edges, background, directed=False)
    nulls = list(en.null_networks(u, v, len(bg), 299, directed=False, seed=1))
    again = en.edge_enrichment(hits, edges, background, directed=False, network="toy", nulls=nulls)
    pd.testing.assert_frame_equal(df, again)


def test_trrust_tf_targets_and_directed_edges():
    rng = np.random.default_rng(10)
    background = GENES[:400]
    tfs = GENES[:20]
    rows = [
        (tf, t)
        for tf in tfs
        for t in rng.choice(background[20:], rng.integers(15, 40), replace=False)
    ]
    edges = pd.DataFrame(rows, columns=["source", "target"]).assign(mode="Activation", pmids="1")
    sets = en.trrust_gene_sets(edges)
    hits = {f"f{i}": list(rng.choice(background, 30, replace=False)) for i in range(10)}
    hits["f3"] = sets[tfs[4]][:12] + [g for g in hits["f3"] if g not in sets[tfs[4]]][:18]
    ora = en.overrepresentation(hits, {"TRRUST": sets}, background, min_size=10)
    assert (ora.iloc[0].feature, ora.iloc[0].term, ora.iloc[0].library) == ("f3", tfs[4], "TRRUST")
    assert ora.iloc[0].q < 0.05
    # directed edges TF -> target among the hits: a TF with many of its targets
    hits["f5"] = [tfs[7]] + sets[tfs[7]][:15] + [tfs[8]] + sets[tfs[8]][:10]
    net = en.edge_enrichment(
        hits, edges, background, directed=True, network="TRRUST", n_perm=499, seed=0
    )
    by = net.set_index("feature")
    assert by.loc["f5", "q"] < 0.05 and by.loc["f5", "edges"] >= 25
    assert f"{tfs[7]}->{sets[tfs[7]][0]}" in by.loc["f5", "edge_list"].split(";")

"""saeflow.dna.differential: differential SAE features between two groups of sequences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from saeflow.dna.differential import COLUMNS, differential_features, volcano
from saeflow.utils import SaeflowError


def _data(seed=0, n_a=40, n_b=50, F=60, planted=(3, 7, 11), shift=1.5, sparse_frac=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_a + n_b, F))
    x[:n_a, list(planted)] += shift
    if sparse_frac:
        x[rng.random(x.shape) < sparse_frac] = 0.0
    groups = np.array(["sig"] * n_a + ["ns"] * n_b)
    perm = rng.permutation(n_a + n_b)
    return x[perm], groups[perm]


@pytest.mark.parametrize("test", ["mannwhitney", "welch"])
def test_planted_features_found_and_nulls_not(test):
    x, g = _data()
    df = differential_features(x, g, "sig", "ns", test=test)
    assert list(df.columns) == COLUMNS and len(df) == x.shape[1]
    hits = set(df.feature[df.q < 0.05])
    assert {3, 7, 11} <= hits
    assert len(hits - {3, 7, 11}) <= 1
    planted = df.set_index("feature").loc[[3, 7, 11]]
    assert (
        (planted["diff"] > 0).all()
        and (planted.rank_biserial > 0).all()
        and (planted.hedges_g > 0).all()
    )
    # swapping the groups flips the signs
    sw = differential_features(x, g, "ns", "sig", test=test)
    np.testing.assert_allclose(sw["diff"], -df["diff"])
    np.testing.assert_allclose(sw.rank_biserial, -df.rank_biserial)
    np.testing.assert_allclose(sw.p, df.p)


@pytest.mark.parametrize("test", ["mannwhitney", "welch"])
def test_null_family_wise_discoveries_near_nominal(test):
    runs = 100
    any_hit = 0
    for seed in range(runs):
        x, g = _data(seed=1000 + seed, n_a=20, n_b=20, F=20, planted=())
        df = differential_features(x, g, "sig", "ns", test=test)
        any_hit += bool((df.q < 0.05).any())
    # under the global null BH controls the FWER at alpha = 0.05
    assert any_hit / runs <= 0.1


def test_pvalues_match_scipy_per_feature_and_bh_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    x, g = _data(seed=3, sparse_frac=0.5)
    x[:, 5] = 2.0  # constant: not tested
    a, b = x[g == "sig"], x[g == "ns"]
    for test in ("mannwhitney", "welch"):
        df = differential_features(x, g, "sig", "ns", test=test)
        assert np.isnan(df.p[5]) and np.isnan(df.q[5]) and np.isnan(df.statistic[5])
        tested = df.p.notna().to_numpy()
        assert tested.sum() == x.shape[1] - 1
        for j in np.flatnonzero(tested):
            if test == "mannwhitney":
                r = stats.mannwhitneyu(a[:, j], b[:, j], alternative="two-sided")
                assert df.rank_biserial[j] == pytest.approx(2 * r.statistic / (len(a) * len(b)) - 1)
            else:
                r = stats.ttest_ind(a[:, j], b[:, j], equal_var=False)
            assert df.statistic[j] == pytest.approx(r.statistic, rel=1e-10)
            assert df.p[j] == pytest.approx(r.pvalue, rel=1e-10)
        q = multipletests(df.p[tested], method="fdr_bh")[1]
        np.testing.assert_allclose(df.q[tested], q, rtol=1e-12)


def test_small_groups_match_scipy_auto_method():
    # n <= 8: scipy picks exact (no ties) or asymptotic (ties) per call; the vectorised call must
    # agree
    rng = np.random.default_rng(5)
    x = rng.normal(size=(10, 6))
    x[:, 2] = np.round(x[:, 2])  # ties in one column
    g = np.array(["a"] * 5 + ["b"] * 5)
    df = differential_features(x, g, "a", "b")
    for j in range(6):
        r = stats.mannwhitneyu(x[:5, j], x[5:, j], alternative="two-sided")
        assert df.p[j] == pytest.approx(r.pvalue, rel=1e-10)


def test_effect_sizes_and_ci_coverage():
    true = 0.5
    covered = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        a = rng.normal(true, 1.0, size=(30, 1))
        b = rng.normal(0.0, 2.0, size=(40, 1))
        df = differential_features(np.vstack([a, b]), [1] * 30 + [2] * 40, 1, 2, test="welch")
        covered += bool(df.ci_low[0] <= true <= df.ci_high[0])
    assert covered >= 88  # nominal 95 %
    # Hedges' g by hand on the last draw
    na, nb = 30, 40
    sd = np.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    g = (a.mean() - b.mean()) / sd * (1 - 3 / (4 * (na + nb) - 9))
    assert df.hedges_g[0] == pytest.approx(g)
    assert df.n_a[0] == 30 and df.n_b[0] == 40


@pytest.mark.parametrize("test", ["mannwhitney", "welch"])
def test_sparse_equals_dense(test, monkeypatch):
    import saeflow.dna.differential as d

    monkeypatch.setattr(d, "_CHUNK", 16)  # several chunks
    x, g = _data(seed=9, sparse_frac=0.7)
    x[:, 20] = 0.0
    dense = differential_features(
        x, g, "sig", "ns", test=test, features=[f"f{i}" for i in range(x.shape[1])]
    )
    for s in (sp.csr_matrix(x), sp.csc_matrix(x), sp.coo_matrix(x)):
        pd.testing.assert_frame_equal(
            differential_features(
                s, g, "sig", "ns", test=test, features=[f"f{i}" for i in range(x.shape[1])]
            ),
            dense,
        )
    assert dense.feature[0] == "f0" and np.isnan(dense.p[20])


def test_other_labels_ignored():
    x, g = _data(seed=2)
    g2 = g.copy()
    g2[:10] = "other"
    df = differential_features(x, g2, "sig", "ns")
    keep = g2 != "other"
    ref = differential_features(x[keep], g2[keep], "sig", "ns")
    pd.testing.assert_frame_equal(df, ref)


def test_errors():
    x, g = _data()
    with pytest.raises(SaeflowError, match="at least 2"):
        differential_features(x, g, "sig", "absent")
    g1 = g.copy()
    g1[g1 == "ns"] = "sig"
    g1[0] = "ns"
    with pytest.raises(SaeflowError, match="'ns' has 1 sequences"):
        differential_features(x, g1, "sig", "ns")
    with pytest.raises(SaeflowError, match="shape mismatch"):
        differential_features(x, g[:-1], "sig", "ns")
    with pytest.raises(SaeflowError, match="shape mismatch"):
        differential_features(x, g, "sig", "ns", features=["a", "b"])
    with pytest.raises(SaeflowError, match="2-D"):
        differential_features(x[:, 0], g, "sig", "ns")
    gm = g.astype(object)
    gm[3] = None
    with pytest.raises(SaeflowError, match="missing"):
        differential_features(x, gm, "sig", "ns")
    xn = x.copy()
    xn[4, 2] = np.nan
    with pytest.raises(SaeflowError, match="NaN"):
        differential_features(xn, g, "sig", "ns")
    with pytest.raises(SaeflowError, match="NaN"):
        differential_features(sp.csr_matrix(xn), g, "sig", "ns")
    with pytest.raises(SaeflowError, match="unknown test"):
        differential_features(x, g, "sig", "ns", test="ks")
    with pytest.raises(SaeflowError, match="same label"):
        differential_features(x, g, "sig", "sig")


def test_volcano_png(tmp_path):
    x, g = _data()
    df = differential_features(x, g, "sig", "ns")
    out = tmp_path / "sub" / "volcano.png"
    volcano(df, out, label_top=3)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert list(out.parent.iterdir()) == [out]  # no temporary left behind
    with pytest.raises(SaeflowError, match="'p'"):
        volcano(df.drop(columns="p"), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()

"""Comparisons across runs (saeflow.compare): depth alignment, paired AUROC statistics, feature
matching, OV/QK audits, organisation statistics, per-source balancing -- on known cases."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from saeflow.compare import (
    align_depth,
    align_predictions,
    audit_head,
    audit_heads,
    audit_heatmap,
    auroc_comparison,
    bootstrap_p,
    delong_test,
    layer_organisation,
    match_features,
    organisation_table,
    paired_auroc_delta,
    plot_by_depth,
    relative_depth,
    run_organisation,
    shared_rows,
    side_by_side,
    unpaired_bootstrap_delta,
)
from saeflow.dna.probes import paired_bootstrap_delta
from saeflow.sae.balance import balanced_index, source_counts, source_weights
from saeflow.utils import SaeflowError

N_BOOT = 400


# --------------------------------------------------------------------------- depth


def test_relative_depth_and_errors():
    assert np.allclose(relative_depth([0, 3, 6, 12], 12), [0, 0.25, 0.5, 1])
    with pytest.raises(SaeflowError, match=r"outside 0\.\.12"):
        relative_depth([13], 12)
    with pytest.raises(SaeflowError, match="integers"):
        relative_depth([1.5], 12)
    with pytest.raises(SaeflowError, match="positive integer"):
        relative_depth([1], 0)


def _per_layer(n_layers, layers=None):
    layers = np.arange(n_layers + 1) if layers is None else np.asarray(layers)
    d = layers / n_layers
    return pd.DataFrame(
        {
            "layer": layers,
            "fvu": 0.1 + 0.5 * d,
            "ann": 100 * d**2,
            "name": [f"L{lyr}" for lyr in layers],
        }
    )


def test_align_depth_nearest_lines_up_models_of_different_depth():
    tabs = {"small": _per_layer(4), "big": _per_layer(12)}
    al = align_depth(tabs, {"small": 4, "big": 12})
    # default grid: the depths of the run with the fewest layers
    assert np.allclose(np.unique(al.grid_depth), [0, 0.25, 0.5, 0.75, 1])
    big = al[al.run == "big"]
    assert big.layer.tolist() == [0, 3, 6, 9, 12]
    assert np.allclose(big.gap, 0)
    assert np.allclose(big.fvu, 0.1 + 0.5 * big.grid_depth)
    assert al.run.tolist()[:2] == ["small", "big"]  # runs in the given order within a grid point
    assert "name" not in al.columns  # only numeric columns shared by all runs by default
    wide = side_by_side(al, "fvu")
    assert list(wide.columns) == ["grid_depth", "small", "big", "small:layer", "big:layer"]
    assert np.allclose(wide.small, wide.big)


def test_align_depth_nearest_ties_gaps_and_linear():
    # run b has only layers 1 and 3 of 4: grid 0.5 is equidistant -> the shallower layer (1)
    tabs = {"a": _per_layer(4), "b": _per_layer(4, [1, 3])}
    al = align_depth(tabs, {"a": 4, "b": 4}, grid=[0.0, 0.5, 1.0], columns=["fvu"])
    b = al[al.run == "b"].set_index("grid_depth")
    assert b.layer.tolist() == [1, 1, 3]
    assert np.allclose(b.gap, [0.25, 0.25, 0.25])
    al = align_depth(tabs, {"a": 4, "b": 4}, grid=[0.0, 0.5, 1.0], columns=["fvu"], max_gap=0.2)
    assert al[al.run == "b"].fvu.isna().all() and al[al.run == "a"].fvu.notna().all()
    # linear: exact for a linear column, NaN outside the run's depth range (no extrapolation)
    lin = align_depth(
        tabs, {"a": 4, "b": 4}, grid=[0.0, 0.5, 0.75], columns=["fvu", "ann"], method="linear"
    )
    b = lin[lin.run == "b"].set_index("grid_depth")
    assert np.isnan(b.loc[0.0, "fvu"])
    assert b.loc[0.5, "fvu"] == pytest.approx(0.1 + 0.5 * 0.5)
    # chord, not the curve
    assert b.loc[0.5, "ann"] == pytest.approx((100 * 0.25**2 + 100 * 0.75**2) / 2)
    assert b.loc[0.75, "ann"] == pytest.approx(100 * 0.75**2)


def test_align_depth_errors(tmp_path):
    with pytest.raises(SaeflowError, match="no n_layers for runs"):
        align_depth({"a": _per_layer(4)}, {"b": 4})
    dup = pd.concat([_per_layer(4), _per_layer(4)])
    with pytest.raises(SaeflowError, match="several rows for layers"):
        align_depth({"a": dup}, {"a": 4})
    with pytest.raises(SaeflowError, match="has no columns"):
        align_depth({"a": _per_layer(4)}, {"a": 4}, columns=["auroc"])
    with pytest.raises(SaeflowError, match="method"):
        align_depth({"a": _per_layer(4)}, {"a": 4}, method="cubic")
    out = tmp_path / "depth.png"
    plot_by_depth(
        {"small": _per_layer(4), "big": _per_layer(12)},
        {"small": 4, "big": 12},
        ["fvu", "ann"],
        out,
    )
    assert out.stat().st_size > 1000


# --------------------------------------------------------------------------- paired AUROC
# statistics


def _labels(n, rng):
    y = np.zeros(n, int)
    y[rng.choice(n, n // 2, replace=False)] = 1
    return y


def test_identical_scores_give_zero_delta():
    rng = np.random.default_rng(0)
    y = _labels(120, rng)
    s = y + rng.normal(0, 1.0, y.size)
    r = paired_auroc_delta(y, s, s.copy(), n_boot=N_BOOT, seed=1)
    assert r["delta"] == 0.0
    assert r["ci_low"] <= 0.0 <= r["ci_high"]
    assert r["ci_low"] == 0.0 and r["ci_high"] == 0.0  # every resample gives the same two AUROCs
    assert r["p_boot"] == 1.0 and r["p_delong"] == 1.0
    assert r["n_boot_used"] == N_BOOT


def test_clearly_better_scorer_excludes_zero():
    rng = np.random.default_rng(1)
    y = _labels(200, rng)
    good = 2.0 * y + rng.normal(0, 1, y.size)
    weak = 0.3 * y + rng.normal(0, 1, y.size)
    r = paired_auroc_delta(y, good, weak, n_boot=N_BOOT, seed=0)
    assert r["delta"] > 0.2
    assert r["ci_low"] > 0 and r["ci_low_delong"] > 0
    assert r["p_delong"] < 1e-4
    # no resample reached 0: the smallest p possible
    assert r["p_boot"] == pytest.approx(2 / (N_BOOT + 1))
    # reversing the roles flips the sign and keeps the p-values
    rr = paired_auroc_delta(y, weak, good, n_boot=N_BOOT, seed=0)
    assert rr["delta"] == pytest.approx(-r["delta"]) and rr["ci_high"] < 0
    assert rr["p_delong"] == pytest.approx(r["p_delong"])


def test_paired_ci_matches_probes_and_is_narrower_than_unpaired_on_correlated_scores():
    rng = np.random.default_rng(2)
    y = _labels(300, rng)
    shared = rng.normal(0, 1, y.size)  # item difficulty both models see
    a = 0.9 * y + shared + rng.normal(0, 0.3, y.size)
    b = 0.7 * y + shared + rng.normal(0, 0.3, y.size)
    r = paired_auroc_delta(y, a, b, n_boot=N_BOOT, seed=5)
    assert (r["delta"], r["ci_low"], r["ci_high"]) == pytest.approx(
        paired_bootstrap_delta(y, a, b, N_BOOT, 5)
    )
    d, lo, hi = unpaired_bootstrap_delta(y, a, y, b, n_boot=N_BOOT, seed=5)
    assert d == pytest.approx(r["delta"])
    assert (r["ci_high"] - r["ci_low"]) < 0.6 * (hi - lo)
    dl = delong_test(y, a, b)
    assert dl["r"] > 0.5  # the two AUROC estimates are strongly correlated


def _delong_bruteforce(y, a, b):
    """DeLong 1988 from the definition: psi over all (positive, negative) pairs, no ranks."""
    out = []
    for s in (a, b):
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        out.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    (A1, v10a, v01a), (A2, v10b, v01b) = out
    m, n = v10a.size, v01a.size

    def cov(p, q):
        return ((p - p.mean()) * (q - q.mean())).sum()

    s10 = np.array([[cov(v10a, v10a), cov(v10a, v10b)], [cov(v10b, v10a), cov(v10b, v10b)]]) / (
        m - 1
    )
    s01 = np.array([[cov(v01a, v01a), cov(v01a, v01b)], [cov(v01b, v01a), cov(v01b, v01b)]]) / (
        n - 1
    )
    S = s10 / m + s01 / n
    return A1 - A2, np.sqrt(S[0, 0] + S[1, 1] - 2 * S[0, 1]), np.sqrt(S[0, 0])


def test_delong_matches_definition_with_ties():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(37, int), np.zeros(52, int)]
    a = rng.integers(0, 6, y.size) + 2 * y  # integer scores: many ties
    b = rng.integers(0, 4, y.size) + y
    delta, se, se_a = _delong_bruteforce(y, a, b)
    r = delong_test(y, a, b)
    assert r["delta"] == pytest.approx(delta, abs=1e-12)
    assert r["se"] == pytest.approx(se, rel=1e-10)
    assert r["se_a"] == pytest.approx(se_a, rel=1e-10)
    from scipy.stats import norm

    assert r["p"] == pytest.approx(2 * norm.sf(abs(delta / se)), rel=1e-9)
    from sklearn.metrics import roc_auc_score

    assert r["auroc_a"] == pytest.approx(roc_auc_score(y, a)) and r["auroc_b"] == pytest.approx(
        roc_auc_score(y, b)
    )


def test_delong_se_agrees_with_bootstrap_and_is_calibrated_under_the_null():
    rng = np.random.default_rng(4)
    y = _labels(400, rng)
    shared = rng.normal(0, 1, y.size)
    a = 0.8 * y + shared + rng.normal(0, 0.7, y.size)
    b = 0.6 * y + shared + rng.normal(0, 0.7, y.size)
    from saeflow.stats import bootstrap_aurocs

    boots = bootstrap_aurocs(y, [a, b], 2000, 0)
    sd_boot = np.std(boots[:, 0] - boots[:, 1])
    assert delong_test(y, a, b)["se"] == pytest.approx(sd_boot, rel=0.15)
    # under H0 (two exchangeable correlated scorers) DeLong rejects at ~ the nominal 5%
    rej = 0
    for _ in range(300):
        y = _labels(100, rng)
        sh = rng.normal(0, 1, y.size)
        a = 0.5 * y + sh + rng.normal(0, 0.8, y.size)
        b = 0.5 * y + sh + rng.normal(0, 0.8, y.size)
        rej += delong_test(y, a, b)["p"] < 0.05
    assert 0.02 <= rej / 300 <= 0.09


def test_bootstrap_p():
    assert bootstrap_p(np.r_[np.full(99, 0.1), [np.nan]]) == pytest.approx(2 / 100)
    assert bootstrap_p(np.linspace(-1, 1, 101)) == 1.0
    assert bootstrap_p(np.r_[np.full(90, 0.1), np.full(9, -0.1)]) == pytest.approx(2 * 10 / 100)


def _preds(rng, n=80, task="t1"):
    y = _labels(n, rng)
    return pd.DataFrame(
        {
            "item": [f"{task}_seq{i}" for i in range(n)],
            "label": y,
            "score": y + rng.normal(0, 1, n),
            "task": task,
        }
    )


def test_align_predictions_by_item_name_and_errors():
    rng = np.random.default_rng(6)
    a = _preds(rng)
    # shuffled rows, same ranks
    b = a.sample(frac=1.0, random_state=0).assign(score=lambda d: d.score * 2 + 1)
    al = align_predictions(a, b)
    assert al.item.tolist() == a.item.tolist()
    assert np.allclose(al.score_b, a.score * 2 + 1)
    with pytest.raises(SaeflowError, match=r"test items differ: 2 of run 'a'.*0 of run 'b'"):
        align_predictions(a, b.iloc[2:])
    with pytest.raises(SaeflowError, match="more than once"):
        align_predictions(a, pd.concat([b, b.iloc[:1]]))
    bad = b.copy()
    bad.loc[bad.index[:3], "label"] = 1 - bad.label.iloc[:3]
    with pytest.raises(SaeflowError, match="3 shared items have different labels"):
        align_predictions(a, bad)
    with pytest.raises(SaeflowError, match="no column"):
        align_predictions(a, b.rename(columns={"score": "logit"}))
    assert len(align_predictions(a, b.iloc[2:], on_mismatch="intersect")) == len(a) - 2


def test_auroc_comparison_per_task():
    rng = np.random.default_rng(7)
    a = pd.concat([_preds(rng, task="t1"), _preds(rng, task="t2")], ignore_index=True)
    b = a.assign(score=rng.normal(0, 1, len(a)))  # a random scorer on the same items
    res = auroc_comparison(a, b, by=["task"], names=("dnabert2", "nt"), n_boot=200)
    assert res.task.tolist() == ["t1", "t2"] and (res.run_a == "dnabert2").all()
    assert (res.delta > 0).all() and (res.n_items == 80).all()
    with pytest.raises(SaeflowError, match="is in run 'dnabert2' but not in run 'nt'"):
        auroc_comparison(a, b[b.task == "t1"], by=["task"], names=("dnabert2", "nt"), n_boot=50)


# --------------------------------------------------------------------------- feature matching


def _sae_like(rng, n, f, density=0.3):
    return np.maximum(rng.normal(0, 1, (n, f)), 0) * (rng.random((n, f)) < density)


def test_match_features_equals_bruteforce_any_chunk_dense_or_sparse():
    rng = np.random.default_rng(8)
    A, B = _sae_like(rng, 60, 7), _sae_like(rng, 60, 9)
    C = np.corrcoef(A.T, B.T)[:7, 7:]
    fa, fb, _ = match_features(A, B, n_null=0, chunk=3)
    assert fa.match.tolist() == C.argmax(axis=1).tolist()
    assert np.allclose(fa["corr"], C.max(axis=1))
    assert fb.match.tolist() == C.argmax(axis=0).tolist()
    for Aa, Bb, ch in (
        (sp.csr_matrix(A), B, 2),
        (A, sp.csc_matrix(B), 7),
        (sp.csr_matrix(A), sp.csr_matrix(B), 100),
    ):
        fa2, fb2, _ = match_features(Aa, Bb, n_null=0, chunk=ch)
        assert (
            np.allclose(fa2["corr"], fa["corr"])
            and (fa2.match == fa.match).all()
            and (fb2.match == fb.match).all()
        )


def test_planted_shared_features_are_matched_above_the_null():
    rng = np.random.default_rng(9)
    n, fa = 500, 40
    A = _sae_like(rng, n, fa)
    A[:, [5, 17]] = 0.0  # dead features of A
    perm = rng.permutation(fa)
    shared = perm[perm != 5][perm[perm != 5] != 17][:30]
    B = np.hstack(
        [
            A[:, shared] * 1.7 + 0.3 * np.abs(rng.normal(0, 1, (n, 30))),
            _sae_like(rng, n, 10),
            np.zeros((n, 2)),
        ]
    )  # 30 planted, 10 independent, 2 dead
    B = B[:, rng.permutation(B.shape[1])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dead columns must not raise divide/invalid warnings
        fa_, fb_, s = match_features(sp.csr_matrix(A), B, threshold=0.5, n_null=5, seed=1, chunk=8)
    assert s["alive_a"] == 38 and s["alive_b"] == 40
    assert s["matched"] == 30 and s["matched_fraction"] == pytest.approx(30 / 38)
    assert s["null_fraction_mean"] < 0.03
    assert s["p_empirical"] == pytest.approx(1 / 6)
    assert s["mutual_above"] == 30
    assert fa_.loc[[5, 17], "match"].tolist() == [-1, -1] and fa_.loc[[5, 17], "corr"].isna().all()
    # the planted features found their own copy: B's column correlates ~1 with A's source column
    hit = fa_[fa_.matched]
    assert set(hit.feature) == set(shared.tolist())
    assert (hit["corr"] > 0.8).all() and (hit.null_corr_max < 0.5).all()
    dead_b = np.flatnonzero(~fb_.alive.to_numpy())
    assert dead_b.size == 2 and not np.isin(fa_.match, dead_b).any()


def test_independent_features_match_at_the_null_rate():
    rng = np.random.default_rng(10)
    A, B = _sae_like(rng, 150, 60), _sae_like(rng, 150, 60)
    # threshold ~ the typical best chance correlation, so both fractions are far from 0 and 1
    _, _, s = match_features(A, B, threshold=0.22, n_null=8, seed=0)
    assert 0.1 < s["null_fraction_mean"] < 0.9
    assert abs(s["matched_fraction"] - s["null_fraction_mean"]) < 0.15
    assert s["p_empirical"] > 0.1


def test_dead_features_never_win_even_against_negative_correlations():
    rng = np.random.default_rng(17)
    x = rng.random(50)
    A = np.column_stack([x, np.zeros(50)])
    # the only alive B feature: r ~ -1
    B = np.column_stack([np.zeros(50), -x + 0.01 * rng.random(50)])
    fa, fb, s = match_features(A, B, threshold=0.5, n_null=2)
    assert (
        fa.match.tolist() == [1, -1] and fa["corr"].iloc[0] < -0.99 and np.isnan(fa["corr"].iloc[1])
    )
    assert fb.match.tolist() == [-1, 0] and fb["corr"].iloc[1] < -0.99
    assert s["matched"] == 0 and s["alive_a"] == 1 and s["alive_b"] == 1


def test_match_features_errors_and_shared_rows():
    rng = np.random.default_rng(11)
    with pytest.raises(SaeflowError, match="A has 10 rows but B has 9"):
        match_features(rng.random((10, 3)), rng.random((9, 3)))
    with pytest.raises(SaeflowError, match="2-D"):
        match_features(rng.random(10), rng.random((10, 3)))
    ia, ib, names = shared_rows(["TP53", "GATA1", "MYC", "CD4"], ["CD4", "XIST", "GATA1", "TP53"])
    assert (
        names.tolist() == ["TP53", "GATA1", "CD4"]
        and ia.tolist() == [0, 1, 3]
        and ib.tolist() == [3, 2, 0]
    )
    with pytest.raises(SaeflowError, match="share no rows"):
        shared_rows(["ENSG1"], ["TP53"])
    with pytest.raises(SaeflowError, match="repeat"):
        shared_rows(["a", "a"], ["a"])


# --------------------------------------------------------------------------- OV / QK audits


def _copy_head(u, scale, d_head=8, noise=0.05, seed=0):
    """A head whose OV maps u to scale * u (top singular
    pair) and everything else to small noise."""
    rng = np.random.default_rng(seed)
    d = u.size
    uh = u / np.linalg.norm(u)
    W_V = rng.normal(0, noise, (d, d_head))
    W_V -= np.outer(uh, uh @ W_V)  # other value directions ignore u
    W_V[:, 0] = uh * np.sqrt(abs(scale))
    W_O = rng.normal(0, noise, (d_head, d))
    W_O -= np.outer(W_O @ uh, uh)  # and write nothing along u: u is then an exact singular pair
    W_O[0] = uh * np.sqrt(abs(scale)) * np.sign(scale)
    W_Q, W_K = rng.normal(0, 0.1, (d, d_head)), rng.normal(0, 0.1, (d, d_head))
    return W_Q, W_K, W_V, W_O


@pytest.mark.parametrize("scale", [3.0, -2.0])
def test_head_that_copies_u_has_self_gain_scale_and_cosine_one(scale):
    rng = np.random.default_rng(12)
    u = rng.normal(0, 1, 64)
    w = _copy_head(u, scale)
    r = audit_head(*w, {"u": u, "5u": 5 * u}, k=3, layer=2, head=1)
    assert r.self_gain.to_numpy() == pytest.approx([scale, scale], rel=1e-9)  # scale-free in u
    assert r.self_write_cos.to_numpy() == pytest.approx([np.sign(scale)] * 2, abs=1e-9)
    for c in ("ov_in_cos", "ov_out_cos", "write_cos", "write_cos_full"):
        assert r[c].to_numpy() == pytest.approx([1, 1], abs=1e-6), c
    assert r.ov_s1.iloc[0] == pytest.approx(abs(scale), rel=1e-6)
    assert r.norm.tolist() == pytest.approx([np.linalg.norm(u), 5 * np.linalg.norm(u)])
    assert (r["layer"] == 2).all() and (r["head"] == 1).all()


def test_random_head_has_cosines_of_order_one_over_sqrt_d():
    rng = np.random.default_rng(13)
    d, dh, k = 256, 16, 4
    dirs = rng.normal(0, 1, (40, d))
    cols = ["ov_in_cos", "ov_out_cos", "qk_query_cos", "qk_key_cos"]
    vals, wk = [], []
    for h in range(5):
        w = [rng.normal(0, 1 / np.sqrt(d), s) for s in ((d, dh), (d, dh), (d, dh), (dh, d))]
        r = audit_head(*w, dirs, k=k)
        vals.append(r[cols].to_numpy())
        wk.append(r.write_cos.to_numpy())
    vals = np.vstack(vals)
    assert vals.max() < 5 / np.sqrt(d)
    assert vals.mean() == pytest.approx(np.sqrt(2 / (np.pi * d)), rel=0.2)  # E|N(0, 1/d)|
    # |P_k u|^2 ~ k/d
    assert np.mean(np.square(np.concatenate(wk))) == pytest.approx(k / d, rel=0.2)


def test_audit_agrees_with_explicit_ov_and_its_svd():
    rng = np.random.default_rng(14)
    d, dh = 32, 6
    W_Q, W_K, W_V, W_O = (rng.normal(0, 1, s) for s in ((d, dh), (d, dh), (d, dh), (dh, d)))
    u = rng.normal(0, 1, d)
    r = audit_head(W_Q, W_K, W_V, W_O, u, k=2).iloc[0]
    OV, QK = W_V @ W_O, W_Q @ W_K.T
    U, s, Vt = np.linalg.svd(OV)
    uh = u / np.linalg.norm(u)
    assert r.ov_in_cos == pytest.approx(abs(uh @ U[:, 0])) and r.ov_out_cos == pytest.approx(
        abs(uh @ Vt[0])
    )
    assert r.write_cos == pytest.approx(np.linalg.norm(Vt[:2] @ uh))
    assert r.self_gain == pytest.approx(u @ OV @ u / (u @ u))
    assert r.qk_self == pytest.approx(u @ QK @ u / (u @ u))
    Uq, _, Vqt = np.linalg.svd(QK)
    assert r.qk_query_cos == pytest.approx(abs(uh @ Uq[:, 0])) and r.qk_key_cos == pytest.approx(
        abs(uh @ Vqt[0])
    )
    # write_cos_full = max over x of cos(u, x OV): the best x solves min |x OV - u|
    x = np.linalg.lstsq(OV.T, uh, rcond=None)[0]
    y = x @ OV
    assert r.write_cos_full == pytest.approx(y @ uh / np.linalg.norm(y), rel=1e-6)


def test_audit_shape_errors_and_many_heads(tmp_path):
    rng = np.random.default_rng(15)
    d, dh, H = 16, 4, 3
    W_Q, W_K, W_V, W_O = (rng.normal(0, 1, s) for s in ((d, dh), (d, dh), (d, dh), (dh, d)))
    u = rng.normal(0, 1, d)
    with pytest.raises(SaeflowError, match="transposed"):
        audit_head(W_Q, W_K, W_V, W_O.T, u)
    with pytest.raises(SaeflowError, match=r"W_K \(16, 5\)"):
        audit_head(W_Q, rng.normal(0, 1, (d, 5)), W_V, W_O, u)
    with pytest.raises(SaeflowError, match="has 15 entries but the model's d_model is 16"):
        audit_head(W_Q, W_K, W_V, W_O, {"probe": u[:15]})
    with pytest.raises(SaeflowError, match="zero vectors"):
        audit_head(W_Q, W_K, W_V, W_O, np.zeros(d))
    weights = {
        L: {
            n: rng.normal(0, 1, (H,) + s)
            for n, s in (("W_Q", (d, dh)), ("W_K", (d, dh)), ("W_V", (d, dh)), ("W_O", (dh, d)))
        }
        for L in (1, 2)
    }
    dirs = {"probe": u, "sae_f12": rng.normal(0, 1, d)}
    aud = audit_heads(weights, dirs, k=2)
    assert len(aud) == 2 * H * 2 and set(aud.direction) == {"probe", "sae_f12"}
    assert len(audit_heads(weights, dirs, heads=[(2, 1)])) == 2
    with pytest.raises(SaeflowError, match="3-D"):
        audit_heads({1: {n: w[0] for n, w in weights[1].items()}}, dirs)
    tab = audit_heatmap(aud, tmp_path / "ov.png", value="self_gain")
    assert tab.shape == (2 * H, 2) and (tmp_path / "ov.png").stat().st_size > 1000


# --------------------------------------------------------------------------- organisation


def test_layer_organisation_fractions():
    feats = pd.DataFrame(
        {
            "feature": range(8),
            "alive": [1, 1, 1, 1, 1, 1, 0, 0],
            "module": [0, 0, 1, -1, -1, -1, 2, -1],
            "svd_aligned": [1, 0, 0, 0, 1, 0, 0, 0],
        }
    ).astype({"alive": bool, "svd_aligned": bool})
    tracking = pd.DataFrame(
        {
            "layer": 3,
            "feature": range(8),
            "persistence_0.7": [2, 1, 0, 0, 1, 0, 0, 0],
            "class": [
                "persistent",
                "moderate",
                "transient",
                "transient",
                "persistent",
                "transient",
                "dead",
                "dead",
            ],
        }
    )
    row = layer_organisation(
        feats, pd.concat([tracking, tracking.assign(layer=4, **{"class": "persistent"})]), layer=3
    )
    assert row["alive"] == 6 and row["modules"] == 2
    assert row["module_fraction"] == pytest.approx(3 / 6)  # feature 6's module does not count: dead
    assert row["superposition_share"] == pytest.approx(4 / 6)
    assert row["persistent_fraction"] == pytest.approx(2 / 6) and row[
        "transient_fraction"
    ] == pytest.approx(3 / 6)
    assert row["mean_persistence_0.7"] == pytest.approx(4 / 6)
    tab = organisation_table(
        {3: feats, 5: feats.assign(alive=[1, 1, 0, 0, 0, 0, 0, 0]).astype({"alive": bool})},
        tracking,
    )
    assert tab.layer.tolist() == [3, 5] and np.isnan(tab.persistent_fraction.iloc[1])
    run = run_organisation(tab)
    assert run["module_fraction"] == pytest.approx((0.5 * 6 + 1.0 * 2) / 8)
    assert run["persistent_fraction"] == pytest.approx(2 / 6)  # only the tracked layer


def test_organisation_with_real_tracking():
    from saeflow.sae.modules import track_features

    rng = np.random.default_rng(16)
    w0 = rng.normal(0, 1, (20, 32))
    w1 = np.vstack([w0[:10] + rng.normal(0, 0.01, (10, 32)), rng.normal(0, 1, (10, 32))])
    tracking, _ = track_features({0: w0, 1: w1})
    feats = pd.DataFrame({"feature": range(20), "alive": True})
    row = layer_organisation(feats, tracking, layer=0)
    assert row["persistent_fraction"] == pytest.approx(0.5)
    assert np.isnan(row["module_fraction"]) and np.isnan(row["superposition_share"])


# --------------------------------------------------------------------------- per-source balancing


def test_source_weights_give_each_source_equal_mass():
    src = np.array(["k562"] * 900 + ["lung"] * 90 + ["blood"] * 10)
    w = source_weights(src)
    assert w.sum() == pytest.approx(1.0)
    for s in ("k562", "lung", "blood"):
        assert w[src == s].sum() == pytest.approx(1 / 3)
    sizes = np.r_[np.full(900, 2.0), np.full(90, 5.0), np.arange(1, 11, dtype=float)]
    ws = source_weights(src, sizes)
    assert ws[src == "blood"].sum() == pytest.approx(1 / 3) and ws[990] / ws[999] == pytest.approx(
        1 / 10
    )
    draw = np.random.default_rng(0).choice(src.size, 30000, p=w)
    share = pd.Series(src[draw]).value_counts(normalize=True)
    assert np.allclose(share.sort_index().to_numpy(), 1 / 3, atol=0.02)
    with pytest.raises(SaeflowError, match="no source label"):
        source_weights(np.array(["a", None], dtype=object))


def test_balanced_index_equal_cap_and_oversampling():
    src = np.array(["k562"] * 900 + ["lung"] * 90 + ["blood"] * 10)
    idx = balanced_index(src, seed=1)
    c = source_counts(src, idx)
    assert c.epoch_rows.tolist() == [10, 10, 10] and np.unique(idx).size == idx.size
    capped = source_counts(src, balanced_index(src, cap=50)).set_index("source").epoch_rows
    assert capped.to_dict() == {"blood": 10, "k562": 50, "lung": 50}
    with pytest.raises(
        SaeflowError, match=r"sources \['blood', 'lung'\] have fewer than 100 rows \(\[10, 90\]\)"
    ):
        balanced_index(src, per_source=100)
    over = balanced_index(src, per_source=100, replace=True, seed=2)
    c = source_counts(src, over).set_index("source")
    assert c.epoch_rows.to_dict() == {"blood": 100, "k562": 100, "lung": 100}
    assert set(np.flatnonzero(src == "blood")) <= set(over.tolist())  # every small-source row used
    assert np.bincount(over, minlength=src.size)[src == "blood"].tolist() == [10] * 10
    with pytest.raises(SaeflowError, match="not both"):
        balanced_index(src, per_source=5, cap=5)
    # different seeds draw different subsets of the big source
    assert not np.array_equal(balanced_index(src, seed=1), balanced_index(src, seed=3))

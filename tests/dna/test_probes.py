"""Linear probes and their controls on small synthetic data (saeflow.dna.probes)."""

from __future__ import annotations

import numpy as np
import pytest

from saeflow.dna.probes import (
    bootstrap_auroc,
    delta_vs_control,
    gc_matched_subset,
    paired_bootstrap_delta,
    probe,
    probe_with_controls,
)
from saeflow.dna.toy import gc_content
from saeflow.utils import SaeflowError

N_BOOT = 300


def _seqs(gc: np.ndarray, rng: np.random.Generator, length: int = 120) -> list[str]:
    out = []
    for g in gc:
        p = [(1 - g) / 2, g / 2, g / 2, (1 - g) / 2]
        out.append("".join(rng.choice(list("ACGT"), size=length, p=p)))
    return out


def _split(n: int, rng) -> np.ndarray:
    split = np.array(["train"] * n, dtype=object)
    split[rng.permutation(n)[: n // 2]] = "test"
    return split


@pytest.fixture(scope="module")
def planted():
    """Label from a linear direction of X; GC and positions independent of it."""
    rng = np.random.default_rng(1)
    n = 400
    X = rng.normal(size=(n, 8))
    y = (X[:, 0] - X[:, 1] + 0.3 * rng.normal(size=n) > 0).astype(int)
    seqs = _seqs(rng.uniform(0.3, 0.7, n), rng)
    positions = rng.uniform(0, 1e6, size=(n, 1))
    df = probe_with_controls(X, y, seqs, _split(n, rng), positions=positions, seed=0, n_boot=N_BOOT)
    return df.set_index("control", drop=False)


def test_planted_signal_found_controls_near_chance(planted):
    df = planted
    assert list(df["control"]) == [
        "features",
        "gc_only",
        "position_only",
        "random_labels",
        "gc_matched",
        "gc_shift",
    ]
    assert df.loc["features", "auroc"] > 0.9
    assert df.loc["features", "accuracy"] > 0.8
    for c in ("gc_only", "position_only", "random_labels"):
        r = df.loc[c]
        assert r["ci_low"] <= 0.5 <= r["ci_high"], (c, r.to_dict())
    # GC is unrelated to the label: matching on GC and shifting GC keep the signal
    assert df.loc["gc_matched", "auroc"] > 0.85
    assert df.loc["gc_shift", "auroc"] > 0.85
    assert 0 < df.loc["gc_matched", "n_test"] <= df.loc["features", "n_test"]
    assert "kept" in df.loc["gc_matched", "note"]
    assert df.loc["features", "n_train"] + df.loc["features", "n_test"] == 400


def test_delta_vs_control_paired_where_test_set_shared(planted):
    d = delta_vs_control(planted.reset_index(drop=True)).set_index("control")
    assert (
        d.loc["gc_only", "paired"]
        and d.loc["random_labels", "paired"]
        and d.loc["position_only", "paired"]
    )
    assert not d.loc["gc_matched", "paired"] and np.isnan(d.loc["gc_matched", "ci_low"])
    for c in ("gc_only", "random_labels"):
        assert d.loc[c, "ci_low"] > 0  # features clearly beat the control
        assert d.loc[c, "ci_low"] <= d.loc[c, "delta_auroc"] <= d.loc[c, "ci_high"]


def test_gc_label_is_caught_by_gc_controls():
    rng = np.random.default_rng(2)
    n = 600
    seqs = _seqs(rng.uniform(0.3, 0.7, n), rng)
    gc = gc_content(seqs)  # the sequences' own GC, as the probe's controls see it
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-25 * (gc - 0.5)))).astype(int)
    # the "activations" carry GC and nothing else about the label
    X = np.column_stack([gc + 0.01 * rng.normal(size=n), rng.normal(size=(n, 4))])
    df = probe_with_controls(X, y, seqs, _split(n, rng), seed=0, n_boot=N_BOOT).set_index("control")
    assert "position_only" not in df.index
    assert df.loc["gc_only", "auroc"] > 0.8
    assert df.loc["features", "auroc"] > 0.8
    assert df.loc["gc_matched", "auroc"] < df.loc["features", "auroc"] - 0.15
    assert abs(df.loc["gc_matched", "auroc"] - 0.5) < 0.2
    assert df.loc["gc_matched", "n_test"] < df.loc["features", "n_test"]


def test_gc_matched_subset_balances_histograms():
    rng = np.random.default_rng(3)
    gc = rng.uniform(0.3, 0.7, 500)
    y = (gc + 0.1 * rng.normal(size=500) > 0.5).astype(int)
    keep = gc_matched_subset(gc, y, bins=10, seed=0)
    edges = np.quantile(gc, np.linspace(0, 1, 11))
    hp, _ = np.histogram(gc[keep][y[keep] == 1], edges)
    hn, _ = np.histogram(gc[keep][y[keep] == 0], edges)
    assert keep.size > 0 and (hp == hn).all()


def test_bootstrap_ci_contains_estimate_and_narrows():
    rng = np.random.default_rng(4)
    widths = []
    for n in (80, 2000):
        y = rng.integers(0, 2, n)
        score = y + rng.normal(scale=1.5, size=n)
        a, lo, hi = bootstrap_auroc(y, score, n_boot=N_BOOT, seed=0)
        assert lo <= a <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_probe_ci_contains_estimate():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(200, 3))
    y = (X[:, 0] + rng.normal(size=200) > 0).astype(int)
    res = probe(X[:100], y[:100], X[100:], y[100:], n_boot=N_BOOT)
    assert res["ci_low"] <= res["auroc"] <= res["ci_high"]
    assert 0.6 < res["auroc"] < 1 and 0 <= res["accuracy"] <= 1
    assert res["n_train"] == 100 and res["n_test"] == 100
    # seeded: the same call gives the same CI
    assert probe(X[:100], y[:100], X[100:], y[100:], n_boot=N_BOOT)["ci_low"] == res["ci_low"]


def test_paired_delta():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 400)
    good = y + rng.normal(scale=0.7, size=400)
    bad = y + rng.normal(scale=3.0, size=400)
    d, lo, hi = paired_bootstrap_delta(y, good, bad, N_BOOT, 0)
    assert d > 0 and lo > 0 and lo <= d <= hi
    d, lo, hi = paired_bootstrap_delta(y, good, good.copy(), N_BOOT, 0)
    assert d == 0 and lo <= 0 <= hi


def test_errors():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(40, 3))
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    with pytest.raises(SaeflowError, match="both classes"):
        probe(X[:20], y[:20], X[20:], y[20:])  # training set is all 0
    with pytest.raises(SaeflowError, match="labels"):
        probe(X[:30], y[:29], X[30:], y[30:])
    with pytest.raises(SaeflowError, match="features"):
        probe(X[::2], y[::2], X[1::2, :2], y[1::2])
    Xn = X.copy()
    Xn[3, 1] = np.nan
    with pytest.raises(SaeflowError, match="NaN"):
        probe(Xn[::2], y[::2], Xn[1::2], y[1::2])
    seqs = ["ACGT" * 5] * 40
    split = np.array(["train", "test"] * 20)
    with pytest.raises(SaeflowError, match="NaN"):
        probe_with_controls(Xn, y, seqs, split, n_boot=10)
    with pytest.raises(SaeflowError, match="sequences"):
        probe_with_controls(X, y, seqs[:-1], split, n_boot=10)
    with pytest.raises(SaeflowError, match="split"):
        probe_with_controls(X, y, seqs, np.array(["train", "valid"] * 20), n_boot=10)
    with pytest.raises(SaeflowError, match="position rows"):
        probe_with_controls(X, y, seqs, split, positions=np.zeros((39, 1)), n_boot=10)
    with pytest.raises(SaeflowError, match="both classes"):
        probe_with_controls(X, np.zeros(40, int), seqs, split, n_boot=10)
    with pytest.raises(SaeflowError, match="0/1"):
        probe(X[::2], np.full(20, 2), X[1::2], y[1::2])
    with pytest.raises(SaeflowError, match="must match"):
        paired_bootstrap_delta(y, X[:, 0], X[:-1, 1], 10, 0)


def _mann_whitney(y, s):
    """P(score of a positive > score of a negative) + 1/2 P(equal), over all pairs."""
    pos, neg = s[y == 1], s[y == 0]
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return (gt + 0.5 * eq) / (pos.size * neg.size)


def test_auroc_counts_ties_as_one_half():
    rng = np.random.default_rng(8)
    y = np.r_[np.ones(25, int), np.zeros(35, int)]  # positives first: order would matter
    s = rng.integers(0, 4, size=60).astype(float) + y  # four or five values: many ties
    a, lo, hi = bootstrap_auroc(y, s, n_boot=100, seed=0)
    assert abs(a - _mann_whitney(y, s)) < 1e-12
    assert lo <= a <= hi
    # a constant score ties every pair: AUROC 1/2 on the data and on every bootstrap resample,
    # whatever the order of the items
    for yy in (y, y[::-1]):
        a, lo, hi = bootstrap_auroc(yy, np.ones(60), n_boot=100, seed=0)
        assert abs(a - 0.5) < 1e-12 and abs(lo - 0.5) < 1e-12 and abs(hi - 0.5) < 1e-12
    # and so does the paired delta, whose bootstrap runs over the same AUROCs
    d, lo, hi = paired_bootstrap_delta(y, s, np.zeros(60), 100, 0)
    assert abs(d - (_mann_whitney(y, s) - 0.5)) < 1e-12 and lo <= d <= hi
    d, lo, hi = paired_bootstrap_delta(y, np.ones(60), np.zeros(60), 100, 0)
    assert abs(d) < 1e-12 and abs(lo) < 1e-12 and abs(hi) < 1e-12

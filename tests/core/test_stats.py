"""saeflow.stats: the one BH, AUROC, Mann-Whitney, percentile CI and row sampler; and the one GC
content (saeflow.dna.sequence), figure writer (saeflow.plots.save_figure), decoder reader."""

import numpy as np
import pytest
from scipy.stats import false_discovery_control, mannwhitneyu

from saeflow.stats import (
    BOOTSTRAP_CHUNK,
    as_binary_labels,
    auroc,
    auroc_rows,
    bh,
    bootstrap_aurocs,
    mann_whitney,
    percentile_ci,
    rank_biserial,
    sample_rows,
)
from saeflow.utils import SaeflowError


def test_bh_matches_scipy_with_ties_and_is_monotone():
    p = np.round(np.random.default_rng(1).random(300) ** 3, 3)  # ties included
    q = bh(p)
    np.testing.assert_allclose(q, false_discovery_control(p, method="bh"), rtol=1e-12)
    o = np.argsort(p)
    assert (np.diff(q[o]) >= 0).all() and q.max() <= 1
    # hand example where the step-up (monotone) pass matters: raw p*m/rank = .05, .045, .04
    np.testing.assert_allclose(bh([0.01, 0.02, 0.04, 0.9]), [0.04, 0.04, 0.0533333333, 0.9])


def test_bh_nan_is_not_tested_and_not_counted():
    p = np.array([0.01, np.nan, 0.04, 0.03, np.nan])
    q = bh(p)
    assert np.isnan(q[[1, 4]]).all()
    np.testing.assert_allclose(q[[0, 2, 3]], false_discovery_control([0.01, 0.04, 0.03]))
    # shape kept; explicit family counts unstored tests at p = 1
    q2 = bh(p.reshape(5, 1), m=6)
    assert q2.shape == (5, 1)
    full = false_discovery_control([0.01, 0.04, 0.03, 1, 1, 1])
    np.testing.assert_allclose(q2[[0, 2, 3], 0], full[:3])
    assert np.isnan(bh([np.nan, np.nan])).all() and bh([]).shape == (0,)
    with pytest.raises(SaeflowError, match="smaller than"):
        bh(p, m=2)
    with pytest.raises(SaeflowError, match=r"\[0, 1\]"):
        bh([0.1, 1.5])


def test_auroc_counts_ties_half_and_matches_mann_whitney_u():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.5, 0.5, 0.9, 0.2, 0.3])
    # pairs (pos, neg): 0.5 v {.1,.5,.2} -> 2.5; 0.9 -> 3; 0.3 v {.1,.5,.2} -> 2 => 7.5 / 9
    assert auroc(y, s) == pytest.approx(7.5 / 9)
    u = mannwhitneyu(s[y == 1], s[y == 0]).statistic
    assert auroc(y, s) == pytest.approx(u / 9)
    rows = auroc_rows(y, np.vstack([s, -s, np.zeros(6)]))
    np.testing.assert_allclose(rows, [7.5 / 9, 1.5 / 9, 0.5])
    assert np.isnan(auroc(np.ones(6, int), s))
    with pytest.raises(SaeflowError, match="0/1"):
        as_binary_labels([0, 2, 1], "t")


@pytest.mark.parametrize("n", [7, 40, 300])
def test_bootstrap_aurocs_equal_the_auroc_of_each_resample(n):
    """Each row is the AUROC of the resampled items, ties counting half, NaN for a resample of one
    class, over more rounds than one chunk (the draws are rng.integers(0, n, (chunk, n)))."""
    rng = np.random.default_rng(n)
    y = rng.random(n) < 0.25
    scores = [
        np.round(rng.normal(size=n) + y, 1),
        rng.integers(0, 3, n).astype(float),
        rng.normal(size=n),
    ]
    n_boot = BOOTSTRAP_CHUNK + 37
    got = bootstrap_aurocs(y, scores, n_boot, seed=5)
    draw = np.random.default_rng(5)
    idx = np.vstack(
        [
            draw.integers(0, n, size=(min(BOOTSTRAP_CHUNK, n_boot - s), n))
            for s in range(0, n_boot, BOOTSTRAP_CHUNK)
        ]
    )
    for j, s in enumerate(scores):
        want = [auroc(y[i], s[i]) for i in idx]
        np.testing.assert_array_equal(got[:, j], want)
    if n == 7:
        assert np.isnan(got).any()  # some resamples of 7 items hold one class


def test_mann_whitney_chooses_the_method_per_column_and_skips_constant_ones():
    rng = np.random.default_rng(0)
    xa, xb = rng.random((5, 4)), rng.random((6, 4))
    xa[:, 1] = np.round(xa[:, 1], 1)
    xb[:, 1] = np.round(xb[:, 1], 1)
    xa[0, 1] = xb[0, 1]  # a tie in column 1 only
    xa[:, 3] = xb[:, 3] = 2.0  # constant: not tested
    u, p = mann_whitney(xa, xb)
    for j in range(3):
        r = mannwhitneyu(xa[:, j], xb[:, j], alternative="two-sided")
        assert (u[j], p[j]) == pytest.approx((r.statistic, r.pvalue))
    assert np.isnan(u[3]) and np.isnan(p[3])
    np.testing.assert_allclose(rank_biserial(u[:3], 5, 6), 2 * u[:3] / 30 - 1)


def test_percentile_ci_and_sample_rows():
    v = np.r_[np.arange(101.0), np.nan, np.inf]
    assert percentile_ci(v) == pytest.approx((2.5, 97.5))
    assert np.isnan(percentile_ci([np.nan])).all()
    np.testing.assert_array_equal(sample_rows(5, 10, 0), np.arange(5))
    s = sample_rows(1000, 10, 3)
    assert len(s) == 10 and (np.diff(s) > 0).all() and (s == sample_rows(1000, 10, 3)).all()


def test_gc_content_is_case_insensitive_and_nan_when_empty():
    from saeflow.dna.sequence import gc_content, gc_fraction, token_gc

    np.testing.assert_allclose(
        gc_content(["GGCA", "ggca", "acgtNN", "gGcC"]), [0.75, 0.75, 1 / 3, 1]
    )
    assert np.isnan(gc_content([""])[0]) and gc_fraction("atgc") == 0.5
    got = token_gc(["aaGGcc", "AT"], np.array([0, 0, 1, 1]), [0, 2, 0, 1], [2, 6, 2, 5])
    np.testing.assert_allclose(got, [0, 1, 0, 0])
    assert np.isnan(token_gc(["ACGT"], [0], [3], [3])[0])


def test_save_figure_is_byte_deterministic_and_atomic(tmp_path):
    import matplotlib.pyplot as plt

    from saeflow.plots import save_figure

    outs = []
    for i in range(2):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        path = tmp_path / f"f{i}.png"
        save_figure(fig, path)
        outs.append(path.read_bytes())
        assert not plt.fignum_exists(fig.number)
    assert outs[0] == outs[1] and b"Software" not in outs[0] and b"matplotlib" not in outs[0]
    fig, ax = plt.subplots()
    save_figure(fig, tmp_path / "f.pdf")
    assert b"CreationDate" not in (tmp_path / "f.pdf").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f0.png", "f1.png"]


def test_decoder_rows_reads_objects_arrays_and_saved_saes(tmp_path):
    torch = pytest.importorskip("torch")
    from saeflow.sae import decoder_rows
    from saeflow.sae.topk import TopKSAE

    sae = TopKSAE(8, 16, k=2)
    with torch.no_grad():
        sae.W_dec.mul_(torch.arange(1, 17, dtype=torch.float32)[:, None])
    want = sae.W_dec.detach().numpy().copy()
    sae.save(tmp_path / "s")
    for obj in (sae, sae.W_dec, want, tmp_path / "s", str(tmp_path / "s")):
        w = decoder_rows(obj)
        assert w.dtype == np.float32 and w.shape == (16, 8)
        np.testing.assert_allclose(w, want, rtol=1e-6)
    u = decoder_rows(sae, unit_norm=True)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1, rtol=1e-5)
    with pytest.raises(SaeflowError, match="not a saved SAE"):
        decoder_rows(tmp_path)
    with pytest.raises(SaeflowError, match="2-D"):
        decoder_rows(np.zeros(3))

"""Statistics shared by every analysis: one implementation of each (multiple testing, AUROC,
rank tests, bootstrap CIs, row sampling).

Policies (the one place they are decided):

* **Multiple testing** (:func:`bh`): Benjamini-Hochberg step-up q-values. A NaN p-value means
  "not tested": its q stays NaN and it does not count in the family size ``m``. ``m`` may be
  given explicitly to count tests that were run but not stored (they count as ``p = 1``); it must
  be at least the number of finite p-values. Any other value outside [0, 1] is an error.
* **AUROC** (:func:`auroc`, :func:`auroc_rows`): the Mann-Whitney probability that a positive
  scores above a negative, ties counting one half; NaN when a row has only one class.
* **Mann-Whitney U** (:func:`mann_whitney`): two-sided, per column, with scipy's ``"auto"``
  exact/asymptotic choice made per column (as a per-column call would make it); columns constant
  over both groups together are not tested (U and p NaN). ``rank_biserial = 2 U / (n_a n_b) - 1``.
* **Bootstrap CIs** (:func:`percentile_ci`): percentile interval of the finite resampled values.
"""

from __future__ import annotations

import numpy as np

from saeflow.utils import SaeflowError

#: resamples drawn per ``rng.integers(0, n, (BOOTSTRAP_CHUNK, n))`` call: part of the seeded
#: draw sequence of :func:`bootstrap_aurocs` (and of its memory: chunk x items at a time)
BOOTSTRAP_CHUNK = 256

# --------------------------------------------------------------------------- multiple testing


def bh(p, m: int | None = None) -> np.ndarray:
    """Benjamini-Hochberg q-values (step-up adjusted p-values) of ``p``, any shape.

    NaN entries are not tested: their q is NaN and they do not count in the family. ``m`` (default:
    the number of finite p-values) is the family size; a larger ``m`` counts ``m - n_tested``
    further tests at ``p = 1`` that are not stored, which gives exactly the q-values BH gives the
    stored ones when those tests are listed. q is monotone in p and capped at 1. Equals statsmodels'
    ``multipletests(..., "fdr_bh")`` and scipy's ``false_discovery_control`` on the finite values.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    flat = p.reshape(-1)
    ok = np.flatnonzero(~np.isnan(flat))
    n = ok.size
    m = n if m is None else int(m)
    if m < n:
        raise SaeflowError(f"family size {m} is smaller than the number of p-values {n}")
    if n == 0:
        return q
    vals = flat[ok]
    if (vals < 0).any() or (vals > 1).any():
        raise SaeflowError("p-values must lie in [0, 1] (NaN = not tested); found values outside")
    order = ok[np.argsort(vals, kind="stable")]
    ranked = flat[order] * (m / np.arange(1, n + 1))
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    np.minimum(ranked, 1.0, out=ranked)
    q.reshape(-1)[order] = ranked
    return q


# --------------------------------------------------------------------------- labels


def as_binary_labels(y, name: str) -> np.ndarray:
    """``y`` as a 1-D int array of 0/1 (bools accepted); anything else raises, naming ``name``."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise SaeflowError(f"{name}: labels must be 1-D, got shape {y.shape}")
    if y.dtype == bool:
        return y.astype(int)
    try:
        yf = y.astype(float)
    except (TypeError, ValueError):
        raise SaeflowError(
            f"{name}: labels must be 0/1, got values like {y[:3].tolist()}"
        ) from None
    if not np.isin(yf, (0.0, 1.0)).all():
        raise SaeflowError(
            f"{name}: labels must be 0/1, got {sorted(set(np.unique(yf).tolist()))[:5]}"
        )
    return yf.astype(int)


def need_two_classes(y: np.ndarray, name: str) -> None:
    """Raise unless the 0/1 labels ``y`` hold both classes."""
    if y.size == 0:
        raise SaeflowError(f"{name}: no items")
    n1 = int(y.sum())
    if n1 == 0 or n1 == y.size:
        raise SaeflowError(
            f"{name}: all {y.size} items have label {int(y[0])}; a probe needs both classes"
        )


# --------------------------------------------------------------------------- AUROC and ranks


def auroc_rows(y, s) -> np.ndarray:
    """Mann-Whitney AUROC of each row of scores ``s`` for the 0/1 labels ``y`` (ties count half).

    ``y`` and ``s``: (n,) or (R, n), broadcast against each other; NaN for a row with one class.
    """
    from scipy.stats import rankdata

    s = np.atleast_2d(np.asarray(s, dtype=np.float64))
    y = np.atleast_2d(np.asarray(y)).astype(np.float64)
    ranks = rankdata(s, axis=1)
    y = np.broadcast_to(y, np.broadcast_shapes(y.shape, s.shape))
    n1 = y.sum(axis=1)
    n0 = y.shape[1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    auc[(n1 == 0) | (n0 == 0)] = np.nan
    return auc


def auroc(y, s) -> float:
    """AUROC of one score vector ``s`` for 0/1 labels ``y`` (ties count half; NaN if one class)."""
    return float(auroc_rows(np.asarray(y), np.asarray(s, dtype=float))[0])


def _tie_blocks(s: np.ndarray):
    """Sort order of ``s``, each item's place in it and, per sorted place, the first and
    one-past-last place of its tie block."""
    order = np.argsort(s, kind="stable")
    where = np.empty_like(order)
    where[order] = np.arange(order.size)
    v = s[order]
    new = np.r_[True, v[1:] != v[:-1]]
    first = np.flatnonzero(new)
    block = np.cumsum(new) - 1
    return order, where, first[block], np.r_[first[1:], v.size][block]


def bootstrap_aurocs(y: np.ndarray, scores, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, len(scores)): AUROCs of each score on the same seeded item resamples.

    A resample holding one class gives NaN (:func:`percentile_ci` skips it). Each resample is a
    vector of draw counts over the items in score order, so the scores are sorted once, not once
    per resample: a drawn positive beats the drawn negatives below its tie block and half of those
    inside it (the Mann-Whitney count of :func:`auroc_rows`, exactly: sums of integers and halves).
    """
    y = np.asarray(y).astype(bool)
    rng = np.random.default_rng(seed)
    n = y.size
    blocks = [_tie_blocks(np.asarray(s, dtype=np.float64)) for s in scores]
    out = np.empty((n_boot, len(scores)))
    for start in range(0, n_boot, BOOTSTRAP_CHUNK):
        k = min(BOOTSTRAP_CHUNK, n_boot - start)
        idx = rng.integers(0, n, size=(k, n))
        rows = n * np.arange(k)[:, None]
        neg = np.zeros((k, n + 1), dtype=np.int64)  # neg[:, i]: drawn negatives in the first i
        for j, (order, where, first, end) in enumerate(blocks):
            counts = np.bincount((where[idx] + rows).ravel(), minlength=k * n).reshape(k, n)
            cp = counts * y[order]
            np.cumsum(counts - cp, axis=1, out=neg[:, 1:])
            u = (cp * (neg[:, first] + neg[:, end])).sum(axis=1) / 2
            n1 = cp.sum(axis=1)
            n0 = n - n1
            with np.errstate(invalid="ignore", divide="ignore"):
                auc = u / (n1 * n0)
            auc[(n1 == 0) | (n0 == 0)] = np.nan
            out[start : start + k, j] = auc
    return out


def percentile_ci(values, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval (central ``level``) of the finite ``values``; (NaN, NaN) if none."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    a = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [a, 100 - a])
    return float(lo), float(hi)


def _has_ties(x: np.ndarray) -> np.ndarray:
    s = np.sort(x, axis=0)
    return (np.diff(s, axis=0) == 0).any(axis=0)


def mann_whitney(xa, xb) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Mann-Whitney U test of each column of ``xa`` (n_a, F) against ``xb`` (n_b, F).

    Returns (U of ``xa``, p), both (F,). scipy's ``method="auto"`` picks exact vs asymptotic from
    ties over the whole call, so features are split into tied / untied groups: each gets the choice
    a per-feature call would make. Columns constant over both groups together are not tested (NaN).
    """
    from scipy.stats import mannwhitneyu

    xa = np.asarray(xa, dtype=np.float64)
    xb = np.asarray(xb, dtype=np.float64)
    F = xa.shape[1]
    u = np.full(F, np.nan)
    p = np.full(F, np.nan)
    if F == 0 or len(xa) == 0 or len(xb) == 0:
        return u, p
    both = np.vstack([xa, xb])
    tested = both.max(axis=0) > both.min(axis=0)
    if len(xa) > 8 and len(xb) > 8:
        parts = [np.flatnonzero(tested)]
    else:
        ties = _has_ties(both)
        parts = [np.flatnonzero(tested & ties), np.flatnonzero(tested & ~ties)]
    for cols in parts:
        if len(cols):
            r = mannwhitneyu(xa[:, cols], xb[:, cols], alternative="two-sided", axis=0)
            u[cols], p[cols] = r.statistic, r.pvalue
    return u, p


def rank_biserial(u, n_a: int, n_b: int) -> np.ndarray:
    """2 U / (n_a n_b) - 1 = P(a > b) - P(a < b) (> 0: group a higher); U of group a."""
    return 2 * np.asarray(u, dtype=np.float64) / (n_a * n_b) - 1


# --------------------------------------------------------------------------- sampling


def sample_rows(n: int, max_rows: int, seed: int) -> np.ndarray:
    """Sorted positions of at most ``max_rows`` of ``n`` rows (all when n <= max_rows; else seeded,
    without replacement)."""
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, int(max_rows), replace=False))

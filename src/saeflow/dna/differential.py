"""Differential SAE features between two labelled groups of sequences.

``differential_features`` tests every feature (column) of a per-sequence activation
matrix (e.g. the mean activation over each sequence's tokens) for a difference
between two groups, with a real two-sample test (Mann-Whitney U or Welch's t),
Benjamini-Hochberg q-values and effect sizes; ``volcano`` draws the result.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from scipy import stats  # noqa: E402

from saeflow.plots import save_figure  # noqa: E402
from saeflow.stats import bh, mann_whitney, rank_biserial  # noqa: E402
from saeflow.utils import SaeflowError  # noqa: E402

COLUMNS = [
    "feature",
    "n_a",
    "n_b",
    "mean_a",
    "mean_b",
    "diff",
    "ci_low",
    "ci_high",
    "rank_biserial",
    "hedges_g",
    "statistic",
    "p",
    "q",
]
TESTS = ("mannwhitney", "welch")
_CHUNK = 4096  # features densified at a time (sparse input)


def _group_rows(groups, n: int, group_a, group_b) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(groups, dtype=object)
    if labels.ndim != 1:
        raise SaeflowError(
            "differential_features: groups must be one label per sequence, got shape "
            f"{labels.shape}"
        )
    if len(labels) != n:
        raise SaeflowError(
            f"differential_features: shape mismatch: activations have {n} sequences (rows) "
            f"but groups has {len(labels)} labels"
        )
    if group_a == group_b:
        raise SaeflowError(
            f"differential_features: group_a and group_b are the same label {group_a!r}"
        )
    lab = pd.Series(labels)
    if lab.isna().any():
        raise SaeflowError(
            f"differential_features: {int(lab.isna().sum())} sequences have a missing (None/NaN) "
            "group label"
        )
    ia = np.flatnonzero((lab == group_a).to_numpy())
    ib = np.flatnonzero((lab == group_b).to_numpy())
    for name, idx in ((group_a, ia), (group_b, ib)):
        if len(idx) < 2:
            present = sorted(map(str, lab.unique()))[:10]
            raise SaeflowError(
                f"differential_features: group {name!r} has {len(idx)} sequences, at least 2 are "
                "needed "
                f"(labels present: {present})"
            )
    return ia, ib


def _as_matrix(acts):
    if sp.issparse(acts):
        m = sp.csr_matrix(acts)
        data = m.data
    else:
        m = np.asarray(acts)
        if m.dtype == object or not (np.issubdtype(m.dtype, np.number) or m.dtype == bool):
            raise SaeflowError(
                f"differential_features: activations must be numeric, got dtype {m.dtype}"
            )
        data = m
    if m.ndim != 2:
        raise SaeflowError(
            "differential_features: activations must be a 2-D (sequences x features) matrix, got "
            f"shape {m.shape}"
        )
    bad = ~np.isfinite(np.asarray(data, dtype=np.float64))
    if bad.any():
        raise SaeflowError(
            f"differential_features: activations contain {int(bad.sum())} NaN/inf values; "
            "drop or impute them before testing"
        )
    return m


def _dense_cols(m, lo: int, hi: int) -> np.ndarray:
    block = m[:, lo:hi]
    if sp.issparse(block):
        block = block.toarray()
    return np.asarray(block, dtype=np.float64)


def differential_features(
    acts,
    groups,
    group_a,
    group_b,
    *,
    test: str = "mannwhitney",
    features: Sequence | None = None,
    z: float = 1.96,
) -> pd.DataFrame:
    """Test each feature for a difference in activation between ``group_a`` and ``group_b``.

    ``acts``: (n_sequences x F) dense array or scipy.sparse matrix of per-sequence activations;
    ``groups``: one label per sequence (sequences with other labels are ignored);
    ``features``: optional names for the F columns (default 0..F-1).

    ``test="mannwhitney"`` (two-sided U test, scipy's default method choice; ``statistic`` is U of
    group_a) or ``"welch"`` (unequal-variance t test; ``statistic`` is t). Features constant over
    both groups together are not tested (statistic, p, q, rank_biserial, hedges_g NaN). q:
    Benjamini-Hochberg over the tested features. Effect sizes (all > 0 when group_a is higher):
    ``diff`` = mean_a - mean_b with a Welch normal-approximation CI ``diff ± z·sqrt(var_a/n_a +
    var_b/n_b)``; ``rank_biserial`` = 2U/(n_a n_b) - 1; ``hedges_g`` = bias-corrected standardised
    difference (NaN when the pooled SD is 0). Rows are in feature order."""
    if test not in TESTS:
        raise SaeflowError(f"differential_features: unknown test {test!r}; use one of {TESTS}")
    if not (np.isfinite(z) and z > 0):
        raise SaeflowError(f"differential_features: z must be a positive number, got {z!r}")
    m = _as_matrix(acts)
    n, F = m.shape
    ia, ib = _group_rows(groups, n, group_a, group_b)
    if features is None:
        names = np.arange(F)
    else:
        names = np.asarray(list(features))
        if len(names) != F:
            raise SaeflowError(
                f"differential_features: shape mismatch: {len(names)} feature names for {F} "
                "activation columns"
            )
    na, nb = len(ia), len(ib)
    rows = np.concatenate([ia, ib])
    sub = m[rows].tocsc() if sp.issparse(m) else m[rows]
    out = {k: np.full(F, np.nan) for k in COLUMNS[3:]}
    for lo in range(0, F, _CHUNK):
        hi = min(F, lo + _CHUNK)
        x = _dense_cols(sub, lo, hi)
        xa, xb = x[:na], x[na:]
        sl = slice(lo, hi)
        ma, mb = xa.mean(0), xb.mean(0)
        va, vb = xa.var(0, ddof=1), xb.var(0, ddof=1)
        d = ma - mb
        se = np.sqrt(va / na + vb / nb)
        out["mean_a"][sl], out["mean_b"][sl], out["diff"][sl] = ma, mb, d
        out["ci_low"][sl], out["ci_high"][sl] = d - z * se, d + z * se
        sd = np.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(sd > 0, d / np.where(sd > 0, sd, 1.0), np.nan) * (
                1 - 3 / (4 * (na + nb) - 9)
            )
        tested = x.max(0) > x.min(0)
        g[~tested] = np.nan
        out["hedges_g"][sl] = g
        cols = np.flatnonzero(tested)
        if not len(cols):
            continue
        ranks = stats.rankdata(x[:, cols], axis=0)
        u = ranks[:na].sum(0) - na * (na + 1) / 2
        out["rank_biserial"][lo + cols] = rank_biserial(u, na, nb)
        if test == "mannwhitney":
            stat, p = mann_whitney(xa[:, cols], xb[:, cols])
        else:
            with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)
                r = stats.ttest_ind(xa[:, cols], xb[:, cols], equal_var=False, axis=0)
            stat, p = r.statistic, r.pvalue
        out["statistic"][lo + cols], out["p"][lo + cols] = stat, p
    out["q"] = bh(out["p"])
    df = pd.DataFrame({"feature": names, "n_a": na, "n_b": nb, **{k: out[k] for k in COLUMNS[3:]}})
    return df[COLUMNS]


def volcano(df: pd.DataFrame, path, alpha: float = 0.05, label_top: int = 10) -> None:
    """Volcano plot of a ``differential_features`` table: effect (rank-biserial, else diff) vs
    -log10 p.

    Features with q < alpha are coloured; the ``label_top`` smallest-p significant features are
    labelled. The PNG is written atomically."""
    for c in ("feature", "p", "q"):
        if c not in df:
            raise SaeflowError(
                f"volcano: table has no {c!r} column (expected differential_features output)"
            )
    xcol = (
        "rank_biserial" if "rank_biserial" in df and df["rank_biserial"].notna().any() else "diff"
    )
    t = df[df["p"].notna()]
    p = t["p"].to_numpy(dtype=np.float64)
    y = -np.log10(np.clip(p, np.finfo(np.float64).tiny, None))
    x = t[xcol].to_numpy(dtype=np.float64)
    sig = (t["q"] < alpha).to_numpy()
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(x[~sig], y[~sig], s=6, c="0.6", alpha=0.6, linewidths=0, label=f"q ≥ {alpha:g}")
    ax.scatter(
        x[sig],
        y[sig],
        s=10,
        c="tab:red",
        alpha=0.8,
        linewidths=0,
        label=f"q < {alpha:g} ({sig.sum()})",
    )
    if label_top > 0 and sig.any():
        top = np.flatnonzero(sig)[np.argsort(p[sig], kind="stable")[:label_top]]
        for i in top:
            ax.annotate(
                str(t["feature"].iloc[i]),
                (x[i], y[i]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.axvline(0, color="0.8", lw=0.8, zorder=0)
    ax.set_xlabel(
        "rank-biserial correlation (>0: higher in group a)"
        if xcol == "rank_biserial"
        else "difference of means (a - b)"
    )
    ax.set_ylabel("-log10 p")
    ax.set_title(f"differential features: {len(t)} tested, {int(sig.sum())} at q < {alpha:g}")
    ax.legend(fontsize=8, loc="upper left")
    save_figure(fig, path)

"""Paired comparisons of two scorers (two models' probes) on the same test items.

Two models probed on the same test items give two AUROCs whose errors are correlated: an item that
is hard for one model tends to be hard for the other. The difference must therefore be tested on
the pairs, not as two independent estimates. Two paired procedures are offered, on the same
``y``/scores:

* **paired bootstrap** (reusing :func:`saeflow.dna.probes.paired_bootstrap_delta`'s resampling):
each
  round resamples the test items with replacement and scores both models on the same resample
  (resamples with one class only are skipped). CI: percentile 95% of the resampled deltas.
  p-value (two-sided, for delta != 0): ``min(1, 2 min(1 + #{d* <= 0}, 1 + #{d* >= 0}) / (1 + B))``
  over the B usable resampled deltas d* -- the smallest two-sided level at which the percentile
  interval would exclude 0, with the +1 that keeps a finite bootstrap from reporting p = 0.
* **DeLong's test** (DeLong, DeLong & Clarke-Pearson 1988, Biometrics 44:837) computed with
  midranks as in Sun & Xu (2014, IEEE Signal Process. Lett. 21:1389): each AUROC is the
  Mann-Whitney statistic (ties count half). With m positives X and n negatives Y, the structural
  components of a score are V10(X_i) = mean_j psi(X_i, Y_j) and V01(Y_j) = mean_i psi(X_i, Y_j)
  (psi = 1 if X > Y, 1/2 if tied, 0 otherwise); S10, S01 are their 2 x 2 sample covariance
  matrices over the two scores (denominator m - 1, n - 1) and Var(AUC_a - AUC_b) = c' (S10/m +
  S01/n) c with c = (1, -1). z = delta / sqrt(Var), two-sided normal p, and a Wald 95% CI
  delta +- 1.96 sqrt(Var). When Var = 0 (e.g. the two scores rank items identically) z is NaN and
  p is 1 if delta = 0, else 0.

:func:`unpaired_bootstrap_delta` resamples each run's items independently: the right interval when
the two runs were scored on *different* items, and wider than the paired one when they share items
and their errors are correlated.

Prediction tables (one row per test item: an item name, the 0/1 label, the score) of two runs are
matched by item name with :func:`align_predictions`, which refuses to compare different item sets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from saeflow.stats import (
    as_binary_labels,
    auroc,
    bootstrap_aurocs,
    need_two_classes,
    percentile_ci,
)
from saeflow.utils import SaeflowError

log = logging.getLogger(__name__)

COMPARISON_COLUMNS = [
    "run_a",
    "run_b",
    "n_items",
    "n_pos",
    "auroc_a",
    "auroc_b",
    "delta",
    "ci_low",
    "ci_high",
    "p_boot",
    "n_boot_used",
    "se_delong",
    "z_delong",
    "p_delong",
    "ci_low_delong",
    "ci_high_delong",
]


def _scores(y, *scores, name: str) -> tuple[np.ndarray, list[np.ndarray]]:
    y = as_binary_labels(y, name)
    out = []
    for k, s in enumerate(scores):
        s = np.asarray(s, dtype=float)
        if s.shape != y.shape:
            raise SaeflowError(
                f"{name}: score {k} has shape {s.shape} but the labels have shape {y.shape}"
            )
        if not np.isfinite(s).all():
            raise SaeflowError(
                f"{name}: score {k} holds {int((~np.isfinite(s)).sum())} NaN/inf values"
            )
        out.append(s)
    need_two_classes(y, name)
    return y, out


# --------------------------------------------------------------------------- DeLong


def _midrank(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, method="average", axis=-1)


def delong_components(y, scores: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROCs and DeLong structural components of several scores on the same items.

    Returns (auc (k,), v10 (k, m) over the positives, v01 (k, n) over the negatives), with
    v10[i] = fraction of negatives scored below positive i (ties 1/2) and v01[j] = fraction of
    positives scored above negative j (ties 1/2); auc = mean(v10) = mean(v01).
    """
    y, scores = _scores(y, *scores, name="delong_components")
    s = np.vstack(scores)
    pos, neg = s[:, y == 1], s[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tz = _midrank(np.concatenate([pos, neg], axis=1))
    tx, ty = _midrank(pos), _midrank(neg)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    auc = v10.mean(axis=1)
    return auc, v10, v01


def delong_test(y, score_a, score_b) -> dict:
    """DeLong's test of AUROC(a) - AUROC(b) = 0 on the same items (see the module docstring).

    Returns auroc_a, auroc_b, delta, se (of delta), z, p (two-sided), ci_low / ci_high (Wald 95%),
    and the single-AUROC standard errors se_a, se_b and their correlation ``r``.
    """
    from scipy.stats import norm

    auc, v10, v01 = delong_components(y, [score_a, score_b])
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.cov(v10) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(v01) if n > 1 else np.zeros((2, 2))
    S = s10 / m + s01 / n
    var = float(S[0, 0] + S[1, 1] - 2 * S[0, 1])
    delta = float(auc[0] - auc[1])
    eps = 1e-15
    if var > eps:
        se = np.sqrt(var)
        z = delta / se
        p = float(2 * norm.sf(abs(z)))
    else:
        se, z = 0.0, float("nan")
        p = 1.0 if abs(delta) <= 1e-12 else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (
            float(S[0, 1] / np.sqrt(S[0, 0] * S[1, 1]))
            if S[0, 0] > 0 and S[1, 1] > 0
            else float("nan")
        )
    half = 1.959963984540054 * se
    return {
        "auroc_a": float(auc[0]),
        "auroc_b": float(auc[1]),
        "delta": delta,
        "se": float(se),
        "z": float(z),
        "p": p,
        "ci_low": float(delta - half),
        "ci_high": float(delta + half),
        "se_a": float(np.sqrt(max(S[0, 0], 0.0))),
        "se_b": float(np.sqrt(max(S[1, 1], 0.0))),
        "r": r,
    }


# --------------------------------------------------------------------------- bootstrap


def bootstrap_p(deltas: np.ndarray) -> float:
    """Two-sided percentile-bootstrap p for delta != 0 from resampled deltas (NaNs ignored; see
    module doc)."""
    d = np.asarray(deltas, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    lo, hi = int((d <= 0).sum()), int((d >= 0).sum())
    return float(min(1.0, 2.0 * (1 + min(lo, hi)) / (1 + d.size)))


def paired_auroc_delta(y, score_a, score_b, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """AUROC(a) - AUROC(b) on the same items: paired bootstrap CI and p, and DeLong's test.

    The bootstrap resamples are those of :func:`saeflow.dna.probes.paired_bootstrap_delta` with the
    same ``seed`` (so ``ci_low``/``ci_high`` equal its interval). Keys: auroc_a, auroc_b, delta,
    ci_low, ci_high, p_boot, n_boot_used (resamples with both classes), se_delong, z_delong,
    p_delong, ci_low_delong, ci_high_delong."""
    y, (a, b) = _scores(y, score_a, score_b, name="paired_auroc_delta")
    if int(n_boot) < 1:
        raise SaeflowError(f"paired_auroc_delta: n_boot must be >= 1 (got {n_boot})")
    boots = bootstrap_aurocs(y, [a, b], int(n_boot), seed)
    d = boots[:, 0] - boots[:, 1]
    lo, hi = percentile_ci(d)
    dl = delong_test(y, a, b)
    return {
        "auroc_a": auroc(y, a),
        "auroc_b": auroc(y, b),
        "delta": auroc(y, a) - auroc(y, b),
        "ci_low": lo,
        "ci_high": hi,
        "p_boot": bootstrap_p(d),
        "n_boot_used": int(np.isfinite(d).sum()),
        "se_delong": dl["se"],
        "z_delong": dl["z"],
        "p_delong": dl["p"],
        "ci_low_delong": dl["ci_low"],
        "ci_high_delong": dl["ci_high"],
    }


def unpaired_bootstrap_delta(
    y_a, score_a, y_b, score_b, *, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """AUROC(a) - AUROC(b) with a percentile 95% CI from *independent* resamples of each run's
    items.

    For runs scored on different test items. On shared items with correlated errors this interval is
    wider than the paired one (:func:`paired_auroc_delta`), which is the one to use there.
    """
    ya, (a,) = _scores(y_a, score_a, name="unpaired_bootstrap_delta (a)")
    yb, (b,) = _scores(y_b, score_b, name="unpaired_bootstrap_delta (b)")
    ba = bootstrap_aurocs(ya, [a], int(n_boot), seed)[:, 0]
    bb = bootstrap_aurocs(yb, [b], int(n_boot), seed + 1_000_003)[:, 0]
    lo, hi = percentile_ci(ba - bb)
    return auroc(ya, a) - auroc(yb, b), lo, hi


# --------------------------------------------------------------------------- prediction tables


def align_predictions(
    pred_a: pd.DataFrame,
    pred_b: pd.DataFrame,
    *,
    item: str = "item",
    label: str = "label",
    score: str = "score",
    names: tuple[str, str] = ("a", "b"),
    on_mismatch: str = "error",
) -> pd.DataFrame:
    """Two runs' test predictions matched by item name: columns item, label, score_a, score_b.

    Each table holds one row per test item (``item``: a unique name, ``label``: 0/1, ``score``:
    the probe's decision value). Rows follow ``pred_a``'s order. Raises :class:`SaeflowError` when
    a column is missing, an item is listed twice, a score is not finite, the labels of a shared
    item disagree, or -- unless ``on_mismatch="intersect"`` (keep the shared items, with a warning
    in the log) -- when the two runs do not hold the same items (the message counts and names
    some of the items only one run has).
    """
    if on_mismatch not in ("error", "intersect"):
        raise SaeflowError(
            f"align_predictions: on_mismatch must be 'error' or 'intersect' (got {on_mismatch!r})"
        )
    for nm, t in zip(names, (pred_a, pred_b)):
        miss = [c for c in (item, label, score) if c not in t.columns]
        if miss:
            raise SaeflowError(
                f"align_predictions: predictions of run {nm!r} have no column(s) {miss} "
                f"(they have: {', '.join(map(str, t.columns))})"
            )
        dup = t[item][t[item].duplicated()]
        if len(dup):
            raise SaeflowError(
                f"align_predictions: run {nm!r} lists {dup.nunique()} items more than once "
                f"(e.g. {dup.astype(str).unique()[:3].tolist()}); one row per test item"
            )
        s = pd.to_numeric(t[score], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(s).all():
            raise SaeflowError(
                f"align_predictions: run {nm!r} has {int((~np.isfinite(s)).sum())} missing or "
                f"non-numeric scores in column {score!r}"
            )
    ka, kb = pred_a[item].astype(str), pred_b[item].astype(str)
    only_a = ka[~ka.isin(set(kb))]
    only_b = kb[~kb.isin(set(ka))]
    if len(only_a) or len(only_b):
        msg = (
            f"the test items differ: {len(only_a)} of run {names[0]!r}'s {len(ka)} items are not "
            "in run "
            f"{names[1]!r} (e.g. {only_a.head(3).tolist()}), {len(only_b)} of run {names[1]!r}'s "
            f"{len(kb)} are "
            f"not in run {names[0]!r} (e.g. {only_b.head(3).tolist()})"
        )
        if on_mismatch == "error":
            raise SaeflowError(
                f"align_predictions: {msg}; a paired comparison needs the same items "
                "(score both runs on the same test split, or pass on_mismatch='intersect')"
            )
        log.warning(
            "align_predictions: %s; comparing the %d shared items", msg, int(ka.isin(set(kb)).sum())
        )
    a = pd.DataFrame(
        {
            "item": ka.to_numpy(),
            "label": pred_a[label].to_numpy(),
            "score_a": pred_a[score].to_numpy(float),
        }
    )
    b = pd.DataFrame(
        {
            "item": kb.to_numpy(),
            "label_b": pred_b[label].to_numpy(),
            "score_b": pred_b[score].to_numpy(float),
        }
    )
    m = a.merge(b, on="item", how="inner", sort=False)
    if len(m) == 0:
        raise SaeflowError(
            f"align_predictions: runs {names[0]!r} and {names[1]!r} share no test items"
        )
    la = as_binary_labels(m["label"].to_numpy(), f"align_predictions (run {names[0]!r})")
    lb = as_binary_labels(m["label_b"].to_numpy(), f"align_predictions (run {names[1]!r})")
    bad = la != lb
    if bad.any():
        raise SaeflowError(
            f"align_predictions: {int(bad.sum())} shared items have different labels in the two "
            "runs "
            f"(e.g. {m.item[bad].head(3).tolist()}); were they built from the same task table?"
        )
    m["label"] = la
    return m[["item", "label", "score_a", "score_b"]]


def auroc_comparison(
    pred_a: pd.DataFrame,
    pred_b: pd.DataFrame,
    *,
    by: Sequence[str] = (),
    names: tuple[str, str] = ("a", "b"),
    item: str = "item",
    label: str = "label",
    score: str = "score",
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Paired AUROC comparison of two runs, one row per group of ``by`` (e.g. ``["task"]``).

    Both tables must hold the same groups and, within each group, the same items
    (:func:`align_predictions`). Columns: the ``by`` columns, then :data:`COMPARISON_COLUMNS`
    (delta = AUROC(a) - AUROC(b); paired bootstrap CI/p and DeLong's test, see the module doc).
    """
    by = list(by)
    for nm, t in zip(names, (pred_a, pred_b)):
        miss = [c for c in by if c not in t.columns]
        if miss:
            raise SaeflowError(
                f"auroc_comparison: predictions of run {nm!r} have no column(s) {miss}"
            )

    def groups(t):
        if not by:
            return {(): t}
        return {(k if isinstance(k, tuple) else (k,)): g for k, g in t.groupby(by, sort=True)}

    ga_all, gb = groups(pred_a), groups(pred_b)
    rows = []
    for key, ga in ga_all.items():
        if key not in gb:
            raise SaeflowError(
                f"auroc_comparison: group {dict(zip(by, key))} is in run {names[0]!r} but not in "
                "run "
                f"{names[1]!r}"
            )
        al = align_predictions(ga, gb[key], item=item, label=label, score=score, names=names)
        res = paired_auroc_delta(
            al.label.to_numpy(),
            al.score_a.to_numpy(),
            al.score_b.to_numpy(),
            n_boot=n_boot,
            seed=seed,
        )
        rows.append(
            {
                **dict(zip(by, key)),
                "run_a": names[0],
                "run_b": names[1],
                "n_items": int(len(al)),
                "n_pos": int(al.label.sum()),
                **res,
            }
        )
    extra = [dict(zip(by, k)) for k in gb if k not in ga_all]
    if extra:
        raise SaeflowError(
            f"auroc_comparison: groups {extra[:3]} are in run {names[1]!r} but not in run "
            f"{names[0]!r}"
        )
    return pd.DataFrame(rows, columns=by + COMPARISON_COLUMNS)

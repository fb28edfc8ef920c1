"""Linear probes for a labelled DNA task, one layer at a time, with controls.

A probe that separates promoters from background says little on its own: the
activations may only carry GC content, the window's position, or the probe may
overfit. :func:`probe_with_controls` therefore fits, next to the probe on the
features, the controls a reviewer asks for:

``features``       the layer's features (e.g. mean-pooled activations);
``gc_only``        GC content and GC squared alone;
``position_only``  the given coordinates alone (only when ``positions`` given);
``random_labels``  the features with the training labels permuted (expect ~0.5);
``gc_matched``     the features probe scored on a GC-matched test subset;
``gc_shift``       trained on the lower-GC half of the training items, tested on
                   the higher-GC half of the test items.

AUROCs carry a percentile bootstrap 95% CI over test items.
:func:`delta_vs_control` gives the features AUROC minus each control's, with a
paired bootstrap CI (:func:`paired_bootstrap_delta`) where the control was
scored on the very same test items.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from saeflow.dna.sequence import gc_content
from saeflow.stats import (
    as_binary_labels,
    auroc,
    bootstrap_aurocs,
    need_two_classes,
    percentile_ci,
)
from saeflow.utils import SaeflowError

COLUMNS = ["control", "auroc", "ci_low", "ci_high", "accuracy", "n_train", "n_test", "note"]
#: controls scored on the same test items as ``features`` (paired deltas apply)
SHARED_TEST = ("gc_only", "position_only", "random_labels")


# --------------------------------------------------------------------------- checks


def _as_features(X, name: str) -> np.ndarray:
    try:
        X = np.asarray(X, dtype=float)
    except (TypeError, ValueError) as e:
        raise SaeflowError(f"{name}: features must be numeric ({e})") from None
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise SaeflowError(
            f"{name}: features must be a 2-D array (items x features), got shape {X.shape}"
        )
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise SaeflowError(f"{name}: features are empty (shape {X.shape})")
    bad = ~np.isfinite(X)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise SaeflowError(
            f"{name}: features hold {int(bad.sum())} NaN/inf values in {rows.size} items "
            f"(first item {int(rows[0])}); drop or impute them before probing"
        )
    return X


# --------------------------------------------------------------------------- AUROC


def bootstrap_auroc(y, score, *, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """AUROC and its percentile 95% CI over resampled items (one-class resamples skipped)."""
    y = as_binary_labels(y, "bootstrap_auroc")
    score = np.asarray(score, dtype=float)
    if score.shape != y.shape:
        raise SaeflowError(f"bootstrap_auroc: {score.shape[0]} scores for {y.shape[0]} labels")
    need_two_classes(y, "bootstrap_auroc")
    boots = bootstrap_aurocs(y, [score], n_boot, seed)[:, 0]
    lo, hi = percentile_ci(boots)
    return auroc(y, score), lo, hi


def paired_bootstrap_delta(
    y, score_a, score_b, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """AUROC(a) - AUROC(b) on the same items, with a paired percentile 95% CI.

    Both scores are evaluated on the same resample of items each round, so the
    CI reflects the difference, not two independent uncertainties.
    """
    y = as_binary_labels(y, "paired_bootstrap_delta")
    a = np.asarray(score_a, dtype=float)
    b = np.asarray(score_b, dtype=float)
    if a.shape != y.shape or b.shape != y.shape:
        raise SaeflowError(
            f"paired_bootstrap_delta: labels {y.shape}, score_a {a.shape}, score_b {b.shape} must "
            "match"
        )
    need_two_classes(y, "paired_bootstrap_delta")
    boots = bootstrap_aurocs(y, [a, b], n_boot, seed)
    lo, hi = percentile_ci(boots[:, 0] - boots[:, 1])
    return auroc(y, a) - auroc(y, b), lo, hi


# --------------------------------------------------------------------------- probe


def probe(
    X_train, y_train, X_test, y_test, *, C: float = 1.0, seed: int = 0, n_boot: int = 1000
) -> dict:
    """Standardise, fit an L2 logistic regression, score the test items.

    Returns auroc, ci_low, ci_high (percentile bootstrap 95% over test items),
    accuracy, n_train, n_test, and the test ``scores`` / ``y_test`` (for paired
    comparisons).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X_train = _as_features(X_train, "probe (train)")
    X_test = _as_features(X_test, "probe (test)")
    y_train = as_binary_labels(y_train, "probe (train)")
    y_test = as_binary_labels(y_test, "probe (test)")
    if X_train.shape[0] != y_train.size:
        raise SaeflowError(
            f"probe: {X_train.shape[0]} training items but {y_train.size} training labels"
        )
    if X_test.shape[0] != y_test.size:
        raise SaeflowError(f"probe: {X_test.shape[0]} test items but {y_test.size} test labels")
    if X_train.shape[1] != X_test.shape[1]:
        raise SaeflowError(
            f"probe: {X_train.shape[1]} training features but {X_test.shape[1]} test features"
        )
    need_two_classes(y_train, "probe (training set)")
    need_two_classes(y_test, "probe (test set)")

    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=C, solver="lbfgs", max_iter=5000, random_state=seed),
    )
    model.fit(X_train, y_train)
    scores = model.decision_function(X_test)
    auc, lo, hi = bootstrap_auroc(y_test, scores, n_boot=n_boot, seed=seed)
    return {
        "auroc": auc,
        "ci_low": lo,
        "ci_high": hi,
        "accuracy": float(np.mean((scores > 0).astype(int) == y_test)),
        "n_train": int(y_train.size),
        "n_test": int(y_test.size),
        "scores": scores,
        "y_test": y_test,
    }


# --------------------------------------------------------------------------- controls


def gc_matched_subset(gc, y, *, bins: int = 10, seed: int = 0) -> np.ndarray:
    """Indices of a subset whose negatives match the positives' GC histogram.

    Bins are GC quantiles of all items. In each bin the same number of
    positives and negatives is kept (the smaller of the two counts, sampled
    without replacement), so both classes end with the same GC histogram;
    bins missing either class are dropped.
    """
    gc = np.asarray(gc, dtype=float)
    y = as_binary_labels(y, "gc_matched_subset")
    if gc.shape != y.shape:
        raise SaeflowError(f"gc_matched_subset: {gc.size} GC values for {y.size} labels")
    rng = np.random.default_rng(seed)
    edges = np.unique(np.quantile(gc, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, gc, side="right") - 1, 0, max(0, edges.size - 2))
    keep = []
    for b in np.unique(which):
        pos = np.flatnonzero((which == b) & (y == 1))
        neg = np.flatnonzero((which == b) & (y == 0))
        k = min(pos.size, neg.size)
        if k:
            keep.append(rng.choice(pos, k, replace=False))
            keep.append(rng.choice(neg, k, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.array([], dtype=int)


def _row(control: str, res: dict | None, note: str = "") -> dict:
    if res is None:
        return {
            "control": control,
            "auroc": np.nan,
            "ci_low": np.nan,
            "ci_high": np.nan,
            "accuracy": np.nan,
            "n_train": 0,
            "n_test": 0,
            "note": note,
        }
    return {"control": control, **{k: res[k] for k in COLUMNS[1:-1]}, "note": note}


def probe_with_controls(
    X, y, seqs, split, *, positions=None, seed: int = 0, n_boot: int = 1000, gc_bins: int = 10
) -> pd.DataFrame:
    """The features probe and its controls, one row each (see the module doc).

    ``split`` holds "train"/"test" per item. A control that cannot be fitted
    (e.g. the GC-matched subset keeps one class) gets NaNs and a ``note``; the
    features probe itself raises. The test scores are kept in
    ``df.attrs["scores"]`` for :func:`delta_vs_control`.
    """
    X = _as_features(X, "probe_with_controls")
    y = as_binary_labels(y, "probe_with_controls")
    seqs = list(seqs)
    split = np.asarray(split).astype(str)
    n = X.shape[0]
    for what, m in (("labels", y.size), ("sequences", len(seqs)), ("split values", split.size)):
        if m != n:
            raise SaeflowError(f"probe_with_controls: {n} feature rows but {m} {what}")
    odd = sorted(set(split.tolist()) - {"train", "test"})
    if odd:
        raise SaeflowError(f"probe_with_controls: split must be 'train'/'test', got {odd[:5]}")
    tr = np.flatnonzero(split == "train")
    te = np.flatnonzero(split == "test")
    if tr.size == 0 or te.size == 0:
        raise SaeflowError(
            f"probe_with_controls: {tr.size} training and {te.size} test items; need both"
        )
    if positions is not None:
        positions = _as_features(positions, "probe_with_controls (positions)")
        if positions.shape[0] != n:
            raise SaeflowError(
                f"probe_with_controls: {n} feature rows but {positions.shape[0]} position rows"
            )

    gc = gc_content([str(s) for s in seqs])
    rows, scores = [], {}

    def run(control, Xa, tr_idx, te_idx, y_train=None, note=""):
        try:
            res = probe(
                Xa[tr_idx],
                y[tr_idx] if y_train is None else y_train,
                Xa[te_idx],
                y[te_idx],
                seed=seed,
                n_boot=n_boot,
            )
        except SaeflowError as e:
            if control == "features":
                raise
            rows.append(_row(control, None, f"skipped: {e}"))
            return
        rows.append(_row(control, res, note))
        scores[control] = {"index": te_idx, "y": res["y_test"], "score": res["scores"]}

    run("features", X, tr, te)
    run("gc_only", np.column_stack([gc, gc**2]), tr, te)
    if positions is not None:
        run("position_only", positions, tr, te)
    perm = np.random.default_rng(seed).permutation(y[tr])
    run("random_labels", X, tr, te, y_train=perm, note="training labels permuted")

    # gc_matched: the features probe (trained as usual) on a GC-matched test subset
    sub = gc_matched_subset(gc[te], y[te], bins=gc_bins, seed=seed)
    feat = scores["features"]
    note = f"kept {sub.size} of {te.size} test items ({int(y[te][sub].sum())} positives)"
    try:
        need_two_classes(y[te][sub], "gc_matched test subset")
        a, lo, hi = bootstrap_auroc(feat["y"][sub], feat["score"][sub], n_boot=n_boot, seed=seed)
        acc = float(np.mean((feat["score"][sub] > 0).astype(int) == feat["y"][sub]))
        rows.append(
            {
                "control": "gc_matched",
                "auroc": a,
                "ci_low": lo,
                "ci_high": hi,
                "accuracy": acc,
                "n_train": int(tr.size),
                "n_test": int(sub.size),
                "note": note,
            }
        )
        scores["gc_matched"] = {"index": te[sub], "y": feat["y"][sub], "score": feat["score"][sub]}
    except SaeflowError as e:
        rows.append(_row("gc_matched", None, f"skipped: {e}; {note}"))

    lo_tr = tr[gc[tr] <= np.median(gc[tr])]
    hi_te = te[gc[te] > np.median(gc[te])]
    run(
        "gc_shift",
        X,
        lo_tr,
        hi_te,
        note=f"train GC <= {np.median(gc[tr]):.3f}, test GC > {np.median(gc[te]):.3f}",
    )

    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs.update(scores=scores, seed=seed, n_boot=n_boot)
    return df


def delta_vs_control(
    df: pd.DataFrame, *, n_boot: int | None = None, seed: int | None = None
) -> pd.DataFrame:
    """Features AUROC minus each control's.

    For controls scored on the same test items as ``features`` (gc_only,
    position_only, random_labels) the 95% CI is a paired bootstrap over those
    items; for the others (different test items) the CI is NaN and ``paired``
    is False. Needs the frame returned by :func:`probe_with_controls` (its
    ``attrs`` carry the test scores).
    """
    scores = df.attrs.get("scores")
    if "control" not in df or "features" not in set(df["control"]):
        raise SaeflowError("delta_vs_control: the table has no 'features' row")
    n_boot = df.attrs.get("n_boot", 1000) if n_boot is None else n_boot
    seed = df.attrs.get("seed", 0) if seed is None else seed
    base = float(df.loc[df["control"] == "features", "auroc"].iloc[0])
    out = []
    for _, r in df[df["control"] != "features"].iterrows():
        c = r["control"]
        delta, lo, hi, paired = base - r["auroc"], np.nan, np.nan, False
        if scores and c in SHARED_TEST and c in scores and "features" in scores:
            f, g = scores["features"], scores[c]
            if np.array_equal(f["index"], g["index"]):
                delta, lo, hi = paired_bootstrap_delta(f["y"], f["score"], g["score"], n_boot, seed)
                paired = True
        out.append(
            {"control": c, "delta_auroc": delta, "ci_low": lo, "ci_high": hi, "paired": paired}
        )
    return pd.DataFrame(out, columns=["control", "delta_auroc", "ci_low", "ci_high", "paired"])

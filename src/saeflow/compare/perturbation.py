"""Perturbation specificity of several runs (e.g. an SAE trained on K562 alone vs on K562 pooled
with Tabula Sapiens tissues): is the model or the training data the bottleneck?

The per-run test is the perturbation rules' regulatory logic
(:func:`saeflow.cells.features.regulatory_logic`,
``perturbation/{sae}/regulatory.tsv``): for a perturbed TF with TRRUST targets, are the features
that respond to its knockdown enriched for features annotated to its targets (permutation null, BH
over every (network, TF) of a layer)? A TF is *specific* in a layer when that q < alpha; the
**TF specificity** of a layer is the fraction of tested TFs that are specific (bio-sae's 6.2% on
K562 alone vs 10.4% pooled), with a Wilson 95% interval.

Two runs are compared on the TFs tested in both at depth-aligned layers (:func:`.runs.layer_pairs`):
the difference in specificity over those shared TFs, an exact McNemar test on the discordant TFs
(specific in one run only; two-sided binomial on b vs c), and BH over every (pair, layer) row of the
comparison. Also per layer: the fraction of perturbation targets with any responding feature.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from saeflow.compare.runs import compare_layer_tables, layer_pairs
from saeflow.utils import SaeflowError

SPECIFICITY_COLUMNS = [
    "layer",
    "tfs_tested",
    "tfs_specific",
    "tf_specificity",
    "ci_low",
    "ci_high",
    "targets",
    "targets_responding",
    "responding_fraction",
]
PAIR_COLUMNS = [
    "grid_depth",
    "run_a",
    "layer_a",
    "depth_a",
    "run_b",
    "layer_b",
    "depth_b",
    "shared_tfs",
    "specific_a",
    "specific_b",
    "only_a",
    "only_b",
    "specificity_a",
    "specificity_b",
    "delta",
    "p_mcnemar",
    "q_mcnemar",
]


def wilson(k, n, z: float = 1.959963984540054) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of k successes in n trials (NaN where n == 0)."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        den = 1 + z**2 / n
        mid = (p + z**2 / (2 * n)) / den
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / den
    # exact at the ends (no 1e-17 from rounding)
    lo = np.where(k == 0, 0.0, np.clip(mid - half, 0, 1))
    hi = np.where(k == n, 1.0, np.clip(mid + half, 0, 1))
    return np.where(n > 0, lo, np.nan), np.where(n > 0, hi, np.nan)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p on the discordant pairs (1.0 when there are none)."""
    from scipy.stats import binomtest

    n = int(only_a) + int(only_b)
    return 1.0 if n == 0 else float(binomtest(int(only_a), n, 0.5).pvalue)


def _tested(reg: pd.DataFrame) -> pd.DataFrame:
    for c in ("layer", "tf", "q"):
        if c not in reg.columns:
            raise SaeflowError(
                f"regulatory table has no column {c!r} (it has: {', '.join(map(str, reg.columns))})"
            )
    r = reg[np.isfinite(pd.to_numeric(reg.q, errors="coerce").to_numpy(float))].copy()
    r["key"] = (r["network"].astype(str) + ":" if "network" in r.columns else "") + r.tf.astype(str)
    return r


def tf_specificity(
    reg: pd.DataFrame, targets: pd.DataFrame | None = None, *, alpha: float = 0.05, layers=None
) -> pd.DataFrame:
    """Per layer: TFs tested, specific (q < alpha), their fraction with a Wilson interval, and
    (given the per-target table) the fraction of perturbation targets with any responding
    feature."""
    r = _tested(reg)
    layers = sorted(
        set(int(x) for x in (layers if layers is not None else []))
        | set(r.layer.astype(int))
        | (set(targets.layer.astype(int)) if targets is not None else set())
    )
    rows = []
    for L in layers:
        g = r[r.layer.astype(int) == L]
        n, k = len(g), int((g.q < alpha).sum())
        row = dict(layer=L, tfs_tested=n, tfs_specific=k, tf_specificity=k / n if n else np.nan)
        if targets is not None:
            t = targets[targets.layer.astype(int) == L]
            row.update(
                targets=len(t),
                targets_responding=int((t.responding > 0).sum()),
                responding_fraction=float((t.responding > 0).mean()) if len(t) else np.nan,
            )
        rows.append(row)
    out = pd.DataFrame(rows).reindex(columns=SPECIFICITY_COLUMNS)
    out["ci_low"], out["ci_high"] = wilson(out.tfs_specific.fillna(0), out.tfs_tested.fillna(0))
    return out


def compare_specificity(
    regs: Mapping[str, pd.DataFrame],
    targets: Mapping[str, pd.DataFrame],
    n_layers: Mapping[str, int],
    layers: Mapping[str, list],
    *,
    alpha: float = 0.05,
    max_gap: float | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per run and layer on the depth grid, per pair of runs and aligned layers); module doc."""
    from saeflow.stats import bh

    per = {r: tf_specificity(regs[r], targets.get(r), alpha=alpha, layers=layers[r]) for r in regs}
    table = compare_layer_tables(per, n_layers, max_gap=max_gap)
    rows = []
    tested = {r: _tested(regs[r]) for r in regs}
    for pr in layer_pairs({r: list(layers[r]) for r in regs}, n_layers, max_gap=max_gap).itertuples(
        index=False
    ):
        a = tested[pr.run_a][tested[pr.run_a].layer.astype(int) == pr.layer_a].set_index("key").q
        b = tested[pr.run_b][tested[pr.run_b].layer.astype(int) == pr.layer_b].set_index("key").q
        shared = a.index.intersection(b.index)
        sa, sb = (a.loc[shared] < alpha).to_numpy(), (b.loc[shared] < alpha).to_numpy()
        n = len(shared)
        only_a, only_b = int((sa & ~sb).sum()), int((sb & ~sa).sum())
        row = pr._asdict()
        row.update(
            shared_tfs=n,
            specific_a=int(sa.sum()),
            specific_b=int(sb.sum()),
            only_a=only_a,
            only_b=only_b,
            specificity_a=sa.mean() if n else np.nan,
            specificity_b=sb.mean() if n else np.nan,
            p_mcnemar=mcnemar_exact(only_a, only_b) if n else np.nan,
        )
        row["delta"] = row["specificity_b"] - row["specificity_a"]
        rows.append(row)
    pairs = pd.DataFrame(rows, columns=[c for c in PAIR_COLUMNS if c != "q_mcnemar"])
    pairs["q_mcnemar"] = bh(pairs.p_mcnemar.to_numpy(float))
    return table, pairs.reindex(columns=PAIR_COLUMNS)


def plot_specificity(table: pd.DataFrame, path, *, title: str | None = None) -> None:
    """TF specificity (Wilson 95% interval) and responding-target fraction by relative depth, per
    run."""
    import matplotlib.pyplot as plt

    from saeflow import plots  # sets the Agg backend

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), squeeze=False)
    runs = list(dict.fromkeys(table.run))
    for i, (run, t) in enumerate(table.groupby("run", sort=False)):
        t = t.dropna(subset=["layer"]).sort_values("depth")
        # dodge: overlapping intervals stay visible
        t = t.assign(depth=t.depth + 0.012 * (i - (len(runs) - 1) / 2))
        y = t.tf_specificity.to_numpy(float)
        err = np.vstack([y - t.ci_low.to_numpy(float), t.ci_high.to_numpy(float) - y])
        # rounding can put a bound a hair past the estimate
        err = np.clip(np.nan_to_num(err), 0, None)
        axes[0][0].errorbar(t.depth, y, yerr=err, fmt="o-", capsize=3, label=run)
        axes[0][1].plot(t.depth, t.responding_fraction.astype(float), "o-", label=run)
    axes[0][0].set_ylabel("TFs with specific responses (q < alpha)")
    axes[0][1].set_ylabel("targets with a responding feature")
    for ax in axes[0]:
        ax.set_xlabel("relative depth (layer / n_layers)")
        ax.set_ylim(-0.03, 1.03)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    plots.save_figure(fig, path)

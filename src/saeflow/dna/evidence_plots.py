"""Figures (and the per-SAE summary table) of the DNA evidence rules; matplotlib only, no torch."""

from __future__ import annotations

import numpy as np
import pandas as pd

from saeflow.plots import save_figure
from saeflow.utils import SaeflowError, read_table


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _heat(ax, data: pd.DataFrame, *, vmin, vmax, cmap, fmt="{:.2f}", title="", mark=None):
    im = ax.imshow(data.to_numpy(dtype=float), vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_xticks(
        range(data.shape[1]), [str(c) for c in data.columns], rotation=45, ha="right", fontsize=7
    )
    ax.set_yticks(range(data.shape[0]), [str(r) for r in data.index], fontsize=7)
    if data.size <= 400:
        for (r, c), v in np.ndenumerate(data.to_numpy(dtype=float)):
            if np.isfinite(v):
                star = "*" if mark is not None and bool(mark.iloc[r, c]) else ""
                ax.text(c, r, fmt.format(v) + star, ha="center", va="center", fontsize=6)
    ax.set_title(title, fontsize=9)
    return im


def probe_heatmap(table: pd.DataFrame, path, title: str = "") -> None:
    """One panel per probe target (label, each motif): layers x controls, AUROC."""
    if table.empty:
        raise SaeflowError("no probe rows to plot")
    plt = _plt()
    groups = list(table.groupby(["level", "target"], sort=False))
    fig, axes = plt.subplots(
        1,
        len(groups),
        figsize=(3.2 * len(groups) + 0.8, 0.35 * table.layer.nunique() + 2),
        squeeze=False,
    )
    order = ["features", "gc_only", "position_only", "random_labels", "gc_matched", "gc_shift"]
    for ax, ((level, target), g) in zip(axes[0], groups):
        piv = g.pivot_table(index="layer", columns="control", values="auroc", dropna=False)
        piv = piv[[c for c in order if c in piv.columns]]
        im = _heat(ax, piv, vmin=0.4, vmax=1.0, cmap="viridis", title=f"{level}: {target}")
        ax.set_ylabel("layer")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="AUROC (test)")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=110)


def head_scan_heatmap(table: pd.DataFrame, path, title: str = "") -> None:
    """Per motif: layers x heads of the QK correlation r and of the matched enrichment rho (* =
    passes)."""
    if table.empty:
        raise SaeflowError("no head-scan rows to plot")
    plt = _plt()
    motifs = list(table.motif.unique())
    nl = table.layer.nunique()
    fig, axes = plt.subplots(
        len(motifs),
        2,
        figsize=(9, (0.35 * nl + 2.0) * len(motifs)),
        squeeze=False,
        constrained_layout=True,
    )
    for row, mid in zip(axes, motifs):
        g = table[table.motif == mid]
        passes = g.pivot(index="layer", columns="head", values="passes")
        r = g.pivot(index="layer", columns="head", values="r")
        rho = g.pivot(index="layer", columns="head", values="rho")
        im = _heat(
            row[0],
            r,
            vmin=-1,
            vmax=1,
            cmap="RdBu_r",
            title=f"{mid}: QK correlation r (criterion >= 0.5)",
            mark=passes,
        )
        fig.colorbar(im, ax=row[0], shrink=0.8)
        hi = max(
            2.5,
            float(np.nanmax(rho.to_numpy(dtype=float)))
            if np.isfinite(rho.to_numpy(dtype=float)).any()
            else 2.5,
        )
        im = _heat(
            row[1],
            rho,
            vmin=0,
            vmax=hi,
            cmap="magma",
            title=f"{mid}: attention enrichment rho (criterion >= 2)",
            mark=passes,
        )
        fig.colorbar(im, ax=row[1], shrink=0.8)
        for ax in row:
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
    fig.suptitle(title + "  (* = passes both criteria)", fontsize=10)
    save_figure(fig, path, dpi=110)


def patching_heatmap(summary: pd.DataFrame, path, title: str = "") -> None:
    """Per motif: mean PM of each (layer, head), and per layer the distribution over pairs (median
    and quartiles) of the PM of the residual stream patched at the site's tokens and at as many
    other tokens (the control)."""
    plt = _plt()
    if summary.empty:  # no pair could be patched: say so in the figure rather than fail the run
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            "no counterfactual pair could be patched\n(no motif site, or every corrupted copy "
            "tokenised to different spans)\nsee the pairs table's `kept` column",
            ha="center",
            va="center",
            fontsize=9,
        )
        fig.suptitle(title, fontsize=10)
        save_figure(fig, path, dpi=110)
        return
    motifs = list(summary.motif.unique())
    fig, axes = plt.subplots(
        len(motifs), 2, figsize=(10, 3.4 * len(motifs)), squeeze=False, constrained_layout=True
    )
    for row, mid in zip(axes, motifs):
        g = summary[(summary.motif == mid) & (summary.component == "head")]
        if len(g):
            piv = g.pivot(index="layer", columns="head", values="mean_pm")
            im = _heat(row[0], piv, vmin=-1, vmax=1, cmap="RdBu_r", title=f"{mid}: heads, mean PM")
            fig.colorbar(im, ax=row[0], shrink=0.8)
            row[0].set_xlabel("head")
            row[0].set_ylabel("layer")
        n = 0
        for comp, label in (
            ("resid_at_site", "at the site's tokens"),
            ("resid_off_site", "at other tokens (control)"),
        ):
            r = summary[(summary.motif == mid) & (summary.component == comp)].sort_values("layer")
            if not len(r):
                continue
            line = row[1].plot(r.layer, r.median_pm, "o-", label=f"{label}: median")[0]
            row[1].fill_between(r.layer, r.q25, r.q75, alpha=0.25, color=line.get_color())
            n = max(n, int(r.n_pairs.max()))
        row[1].axhline(0, color="0.7", lw=0.8)
        row[1].axhline(1, color="0.7", lw=0.8, ls=":")
        row[1].set_xlabel("layer (clean residual stream patched in)")
        row[1].set_ylabel("PM (median, quartiles)")
        row[1].legend(fontsize=7)
        row[1].set_title(f"{mid}: residual stream, {n} pairs", fontsize=9)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=110)


SUMMARY_COLUMNS = [
    "layer",
    "motif",
    "feature",
    "auroc_test",
    "specificity",
    "null_q95",
    "p",
    "specific",
    "n_tested",
    "n_differential",
]


def evidence_summary(
    ablation_paths, differential_paths, layers, path, title: str = "", alpha: float = 0.05
) -> pd.DataFrame:
    """Per layer and motif: the best motif feature (held-out AUROC), its ablation specificity
    against the null, and the number of differential features (q < alpha); a three-panel figure."""
    plt = _plt()
    rows = []
    for layer, ap, dp in zip(layers, ablation_paths, differential_paths):
        ab, df = read_table(ap), read_table(dp)
        n_t, n_d = int(df.p.notna().sum()), int((df.q < alpha).sum())
        if ab.empty:
            rows.append(dict(layer=layer, motif=None, n_tested=n_t, n_differential=n_d))
        for r in ab.to_dict("records"):
            rows.append(
                dict(
                    layer=layer,
                    **{k: r[k] for k in SUMMARY_COLUMNS[1:8]},
                    n_tested=n_t,
                    n_differential=n_d,
                )
            )
    table = pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for mid, g in table.dropna(subset=["motif"]).groupby("motif"):
        axes[0].plot(g.layer, g.auroc_test, "o-", label=mid)
        axes[1].plot(g.layer, g.specificity, "o-", label=f"{mid} feature")
        axes[1].plot(
            g.layer, g.null_q95, "x:", color=axes[1].lines[-1].get_color(), label=f"{mid} null 95%"
        )
    axes[0].set_title("best motif feature: held-out token AUROC", fontsize=9)
    axes[0].set_ylim(0.4, 1.02)
    axes[1].set_title("ablation specificity (KL at firing - elsewhere)", fontsize=9)
    d = table.drop_duplicates("layer")
    axes[2].bar(d.layer.astype(str), d.n_differential)
    axes[2].set_title(f"differential features (label 1 vs 0, q < {alpha:g})", fontsize=9)
    for ax in axes[:2]:
        ax.set_xlabel("layer")
        if ax.lines:
            ax.legend(fontsize=7)
    axes[2].set_xlabel("layer")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=110)
    return table

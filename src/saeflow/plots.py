"""Figures for the report (matplotlib, Agg backend), written by :func:`save_figure` only."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from saeflow.utils import atomic_path  # noqa: E402

#: metadata that would make a figure's bytes depend on when or with what it was drawn, per format
_NO_STAMP = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
    "svg": {"Creator": None, "Date": None},
}


def save_figure(fig, path, *, dpi: int = 120) -> None:
    """Write ``fig`` to ``path`` atomically and byte-deterministically, then close it.

    The format is ``path``'s suffix (PNG when it has none). Timestamps and software versions are
    left out of the file's metadata (and SVG ids are salted with a constant), so the same figure
    drawn twice gives the same bytes. The one way saeflow writes a figure.
    """
    from pathlib import Path

    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    try:
        with (
            matplotlib.rc_context({"svg.hashsalt": "saeflow"}),
            atomic_path(path, suffix=f".{fmt}") as tmp,
        ):
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", metadata=_NO_STAMP.get(fmt))
    finally:
        plt.close(fig)


def training_curves(curves: dict[int, pd.DataFrame], path) -> None:
    """FVU, L0, dead fraction and the architecture's own term
    (AuxK loss or sparsity coefficient)."""
    extra = next(
        (c for c in ("aux", "coef", "threshold") if any(c in df for df in curves.values())), None
    )
    titles = {
        "aux": "AuxK loss",
        "coef": "sparsity coefficient (calibrated)",
        "threshold": "inference threshold",
    }
    fig, axes = plt.subplots(1, 4 if extra else 3, figsize=(17 if extra else 13, 3.5))
    for layer, df in sorted(curves.items()):
        axes[0].plot(df.tokens, df.fvu, label=f"layer {layer}")
        axes[1].plot(df.tokens, df.l0, label=f"layer {layer}")
        axes[2].plot(df.tokens, df.dead, label=f"layer {layer}")
        if extra and extra in df:
            axes[3].plot(df.tokens, df[extra], label=f"layer {layer}")
    names = ["FVU (train batch)", "L0 (train batch)", "dead fraction (AuxK window)"]
    for ax, t in zip(axes, names + ([titles[extra]] if extra else [])):
        ax.set_xlabel("training tokens")
        ax.set_title(t)
    axes[0].set_yscale("log")
    if extra == "coef":
        axes[3].set_yscale("log")
    axes[0].legend(fontsize=8)
    save_figure(fig, path)


def catalog_summary(summary: pd.DataFrame, path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    x = summary.layer
    axes[0].plot(x, summary.VarExpl, "o-")
    axes[0].set_title("variance explained (held out)")
    axes[1].bar(x - 0.2, summary.Alive, 0.4, label="alive")
    axes[1].bar(x + 0.2, summary.Dead, 0.4, label="dead")
    axes[1].set_title("latents")
    axes[1].legend()
    axes[2].bar(x - 0.2, summary["SVD-aligned"], 0.4, label="SVD-aligned")
    axes[2].bar(x + 0.2, summary.Novel, 0.4, label="novel")
    axes[2].set_title("alive features vs top SVD axes")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("layer")
        ax.set_xticks(list(x))
    save_figure(fig, path)


def recovery(table: pd.DataFrame, path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for label, g in table.groupby(table.motif_id + " " + table.motif_name):
        axes[0].plot(g.layer, g.f1, "o-", label=label)
        axes[1].plot(g.layer, g.auroc, "o-", label=label)
    axes[0].plot(
        *table.groupby("layer").f1_null.max().reset_index().values.T,
        "k--",
        label="null (shifted sites)",
    )
    axes[0].set_title("best feature: base-level F1 (held out)")
    axes[1].set_title("same feature: window-level AUROC (held out)")
    axes[1].axhline(0.5, color="grey", lw=0.8)
    for ax in axes:
        ax.set_xlabel("layer")
        ax.set_ylim(0, 1.02)
        ax.set_xticks(sorted(table.layer.unique()))
    axes[0].legend(fontsize=8)
    save_figure(fig, path)


def toy_lm_accuracy(metrics: dict, path) -> None:
    keys = sorted(k for k in metrics if k.startswith("masked_acc_") and k != "masked_acc_motif_all")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    vals = [metrics[k] for k in keys]
    ax.bar(
        [k.replace("masked_acc_", "") for k in keys],
        vals,
        color=["grey" if k.endswith("background") else "C0" for k in keys],
    )
    ax.set_ylabel("masked-token accuracy")
    ax.set_title("toy LM: accuracy at planted-motif bases vs background")
    ax.tick_params(axis="x", rotation=30)
    save_figure(fig, path)


def frequency_histogram(hist: dict, path, title: str = "") -> None:
    """Latents by log10 firing frequency on held-out tokens (from evaluation.frequency_histogram);
    dead apart."""
    import numpy as np

    edges = np.asarray(hist["log10_edges"])
    counts = np.asarray(hist["counts"])
    width = edges[1] - edges[0]
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.bar(edges[:-1], counts, width=width, align="edge", color="C0", label="alive latents")
    # dead latents (frequency 0, log10 = -inf) get their own bar left of the axis
    dead_x = edges[0] - 0.8
    ax.bar([dead_x], [hist["n_dead"]], width=0.4, color="grey", label=f"dead: {hist['n_dead']}")
    ax.axvline(edges[0] - 0.4, color="k", lw=0.6)
    ax.axvline(
        np.log10(hist["dense_threshold"]),
        color="C3",
        ls="--",
        lw=1,
        label=f"dense (> {hist['dense_threshold']:g} of tokens)",
    )
    ticks = [t for t in range(int(np.floor(edges[0])), 1)]
    ax.set_xticks([dead_x, *ticks], ["dead", *[f"$10^{{{t}}}$" for t in ticks]])
    ax.set_xlabel("firing frequency (held-out tokens)")
    ax.set_ylabel("latents")
    ax.set_title(title or f"{hist['n_latents']} latents")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def eval_summary(summary: pd.DataFrame, path) -> None:
    """Per-layer SAE evaluation: reconstruction, sparsity, masked-LM loss and loss recovered."""
    fig, axes = plt.subplots(1, 5, figsize=(21, 3.5))
    x = summary.layer
    axes[0].plot(x, summary.fvu, "o-")
    axes[0].set_title("FVU (held out)")
    axes[0].set_ylim(bottom=0)
    axes[1].plot(x, summary.l0, "o-")
    axes[1].set_title("L0 (active latents per token)")
    axes[1].set_ylim(bottom=0)
    axes[2].plot(x, summary.dead_fraction, "o-", label="dead")
    axes[2].plot(x, summary.dense_fraction, "s-", label="dense (> 10% of tokens)")
    axes[2].set_title("latent fractions")
    axes[2].set_ylim(0, 1.02)
    axes[2].legend(fontsize=8)
    axes[3].plot(x, summary.loss_clean, "o-", color="k", label="clean")
    axes[3].plot(x, summary.loss_sae, "o-", color="C0", label="SAE reconstruction")
    axes[3].plot(x, summary.loss_zero, "o--", color="grey", label="layer zeroed")
    axes[3].set_title("masked-LM loss (nats / masked token)")
    for xi, ls, lr in zip(x, summary.loss_sae, summary.loss_recovered):
        if pd.notna(ls):  # undefined where zeroing the layer barely moves the loss (loss_note)
            axes[3].annotate(
                f"{lr:.2f}" if pd.notna(lr) else "n/a",
                (xi, ls),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=8,
                color="C0",
            )
    axes[3].legend(fontsize=8, title="numbers: loss recovered", title_fontsize=8)
    for ax in axes:
        ax.set_xlabel("layer")
        ax.set_xticks(list(x))
    save_figure(fig, path)


def cell_summary(summary: pd.DataFrame, path) -> None:
    """Single-cell atlas per layer: alive and annotated
    features, modules, cross-layer persistence."""
    fig, axes = plt.subplots(1, 5, figsize=(21, 3.5))
    x = summary.layer
    axes[0].plot(x, summary.Alive, "o-", label="alive")
    axes[0].plot(x, summary.Annotated, "s-", label="annotated (q < alpha)")
    if "CellTypeFeatures" in summary:
        axes[0].plot(x, summary.CellTypeFeatures, "^-", label="cell-type enriched")
    axes[0].set_title("features")
    axes[0].legend(fontsize=8)
    axes[1].plot(x, summary["Ann%"], "o-")
    axes[1].set_title("annotated (% of alive)")
    axes[1].set_ylim(bottom=0)
    axes[2].bar(x, summary.Modules)
    axes[2].set_title("co-activation modules")
    bottom = pd.Series(0.0, index=summary.index)
    for cls, color in (("Persistent", "C2"), ("Moderate", "C1"), ("Transient", "C7")):
        vals = summary[cls].fillna(0)
        axes[3].bar(x, vals, bottom=bottom, label=cls.lower(), color=color)
        bottom += vals
    axes[3].set_title("match in the next layer (decoder cosine)")
    axes[3].legend(fontsize=8)
    ax = axes[
        4
    ]  # SVD vs SAE: variance explained, and how often novel vs SVD-aligned features are annotated
    if "SVDVarExpl" in summary and summary.SVDVarExpl.notna().any():
        ax.plot(x, 100 * summary.SVDVarExpl, "o-", color="C0", label="variance expl.: top SVD axes")
        ax.plot(x, 100 * summary.SAEVarExpl, "s-", color="C1", label="variance expl.: SAE")
    if "NovelAnn%" in summary:
        ax.plot(
            x, summary["AlignedAnn%"], "^--", color="C2", label="annotated: SVD-aligned features"
        )
        ax.plot(x, summary["NovelAnn%"], "v--", color="C3", label="annotated: novel features")
    ax.set_title("SVD vs SAE (%)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("layer")
        ax.set_xticks(list(x))
    save_figure(fig, path)


def _heatmap(
    ax,
    mat: pd.DataFrame,
    title: str,
    cbar_label: str,
    annot: pd.DataFrame | None = None,
    fmt="{:.0f}",
    vmax: float | None = None,
):
    import numpy as np

    vals = mat.to_numpy(dtype=float)
    im = ax.imshow(vals, aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
    ax.set_xticks(range(mat.shape[1]), [str(c) for c in mat.columns])
    ax.set_yticks(range(mat.shape[0]), [str(r) for r in mat.index])
    ax.set_xlabel("layer")
    ax.set_title(title)
    ann = mat if annot is None else annot
    if mat.size <= 400:
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                v = ann.iat[i, j]
                if v == v and np.isfinite(v):
                    ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7, color="w")
    plt.colorbar(im, ax=ax, label=cbar_label)


def perturbation_summary(
    targets: pd.DataFrame,
    regulatory: pd.DataFrame,
    path,
    alpha: float = 0.05,
    max_targets: int = 40,
) -> None:
    """Responding features per target x layer; regulatory logic (-log10 q, fold) per TF x layer."""
    import numpy as np

    has_reg = len(regulatory) > 0 and np.isfinite(regulatory.p.to_numpy(float)).any()
    fig, axes = plt.subplots(
        1,
        2 if has_reg else 1,
        figsize=(13 if has_reg else 7, 0.3 * min(targets.target.nunique(), max_targets) + 2.5),
        squeeze=False,
    )
    # the targets with the most responding features (all when few)
    order = (
        targets.groupby("target").responding.sum().sort_values(ascending=False).index[:max_targets]
    )
    mat = targets.pivot(index="target", columns="layer", values="responding").loc[order]
    _heatmap(
        axes[0, 0], mat, f"features responding to the perturbation (q < {alpha:g})", "features"
    )
    if has_reg:
        r = regulatory[np.isfinite(regulatory.p.to_numpy(float))]
        r = r.assign(key=r.tf + (" (" + r.network + ")" if r.network.nunique() > 1 else ""))
        q = r.pivot_table(index="key", columns="layer", values="q", aggfunc="min")
        fold = r.pivot_table(
            index="key", columns="layer", values="fold", aggfunc="max"
        ).reindex_like(q)
        lq = -np.log10(q.clip(lower=1e-300))
        # the colour scale starts at q = 1 and reaches its top no lower than q = alpha^2, so
        # nothing non-significant looks bright
        _heatmap(
            axes[0, 1],
            lq,
            f"regulatory logic (fold; bright = small q, q < {alpha:g} at {-np.log10(alpha):.1f})",
            "-log10 q (BH)",
            annot=fold,
            fmt="{:.1f}x",
            vmax=max(2 * -np.log10(alpha), float(np.nanmax(lq.to_numpy())) if lq.size else 0),
        )
    save_figure(fig, path)

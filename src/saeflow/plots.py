"""Figures for the report (matplotlib, Agg backend; PNG written atomically)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .utils import atomic_path  # noqa: E402


def _save(fig, path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def training_curves(curves: dict[int, pd.DataFrame], path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for layer, df in sorted(curves.items()):
        axes[0].plot(df.tokens, df.fvu, label=f"layer {layer}")
        axes[1].plot(df.tokens, df.dead, label=f"layer {layer}")
        axes[2].plot(df.tokens, df.aux, label=f"layer {layer}")
    for ax, t in zip(axes, ["FVU (train batch)", "dead fraction (AuxK window)", "AuxK loss"]):
        ax.set_xlabel("training tokens")
        ax.set_title(t)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    _save(fig, path)


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
    _save(fig, path)


def recovery(table: pd.DataFrame, path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for label, g in table.groupby(table.motif_id + " " + table.motif_name):
        axes[0].plot(g.layer, g.f1, "o-", label=label)
        axes[1].plot(g.layer, g.auroc, "o-", label=label)
    axes[0].plot(*table.groupby("layer").f1_null.max().reset_index().values.T, "k--", label="null (shifted sites)")
    axes[0].set_title("best feature: base-level F1 (held out)")
    axes[1].set_title("same feature: window-level AUROC (held out)")
    axes[1].axhline(0.5, color="grey", lw=0.8)
    for ax in axes:
        ax.set_xlabel("layer")
        ax.set_ylim(0, 1.02)
        ax.set_xticks(sorted(table.layer.unique()))
    axes[0].legend(fontsize=8)
    _save(fig, path)


def toy_lm_accuracy(metrics: dict, path) -> None:
    keys = sorted(k for k in metrics if k.startswith("masked_acc_") and k != "masked_acc_motif_all")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    vals = [metrics[k] for k in keys]
    ax.bar([k.replace("masked_acc_", "") for k in keys], vals,
           color=["grey" if k.endswith("background") else "C0" for k in keys])
    ax.set_ylabel("masked-token accuracy")
    ax.set_title("toy LM: accuracy at planted-motif bases vs background")
    ax.tick_params(axis="x", rotation=30)
    _save(fig, path)

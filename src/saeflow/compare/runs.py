"""Glue between the per-run outputs of the workflow and the comparison statistics.

Each function takes what the comparison rules read from disk (per-layer summary tables, probe
predictions, head scans, feature tables, SAE decoder rows, head weights) as plain pandas / numpy
objects keyed by a run label, and returns a tidy table on the relative-depth grid of
:mod:`saeflow.compare.depth`. No torch here: the rules that need a model or an SAE load them in
their scripts (or through :mod:`saeflow.compare.codes`) and pass arrays in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from saeflow.compare.depth import align_depth
from saeflow.utils import SaeflowError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- reading


def read_layer_table(
    path, *, required: Sequence[str] = ("layer",), what: str = "table"
) -> pd.DataFrame:
    """A TSV/parquet table with (at least) the ``required`` columns; errors name the file."""
    path = Path(path)
    try:
        t = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, sep="\t")
    except FileNotFoundError:
        raise SaeflowError(f"{path}: no such {what}") from None
    except Exception as e:  # noqa: BLE001 - parse errors of any reader
        raise SaeflowError(f"{path}: cannot read the {what} ({type(e).__name__}: {e})") from None
    miss = [c for c in required if c not in t.columns]
    if miss:
        raise SaeflowError(
            f"{path}: the {what} has no column(s) {miss} (it has: {', '.join(map(str, t.columns))})"
        )
    return t


# --------------------------------------------------------------------------- depth pairs


def depth_pairs(
    layers: Mapping[str, Sequence[int]],
    n_layers: Mapping[str, int],
    *,
    max_gap: float | None = None,
) -> pd.DataFrame:
    """Each run's layer at each point of the common depth grid (the depths of the run with the
    fewest layers), nearest layer; a run further than ``max_gap`` from a grid point has layer -1
    there.

    Returns grid_depth, run, layer, depth, gap (tidy, as :func:`align_depth`)."""
    tables = {
        r: pd.DataFrame({"layer": sorted(set(int(lyr) for lyr in ls)), "_present": 1.0})
        for r, ls in layers.items()
    }
    for r, t in tables.items():
        if t.empty:
            raise SaeflowError(f"depth_pairs: run {r!r} has no layers")
    al = align_depth(tables, n_layers, columns=["_present"], max_gap=max_gap)
    al.loc[al["_present"].isna(), "layer"] = -1
    return al.drop(columns="_present")


def _pairs(runs: Sequence[str]) -> list[tuple[str, str]]:
    return [(runs[i], runs[j]) for i in range(len(runs)) for j in range(i + 1, len(runs))]


def layer_pairs(
    layers: Mapping[str, Sequence[int]],
    n_layers: Mapping[str, int],
    *,
    max_gap: float | None = None,
) -> pd.DataFrame:
    """For every pair of runs (in the order given) and every grid depth where both have a layer
    within ``max_gap``: grid_depth, run_a, layer_a, depth_a, run_b, layer_b, depth_b."""
    al = depth_pairs(layers, n_layers, max_gap=max_gap)
    rows = []
    for a, b in _pairs(list(layers)):
        for g, grp in al.groupby("grid_depth", sort=True):
            ra, rb = grp[grp.run == a].iloc[0], grp[grp.run == b].iloc[0]
            if ra.layer < 0 or rb.layer < 0:
                continue
            rows.append(
                dict(
                    grid_depth=float(g),
                    run_a=a,
                    layer_a=int(ra.layer),
                    depth_a=float(ra.depth),
                    run_b=b,
                    layer_b=int(rb.layer),
                    depth_b=float(rb.depth),
                )
            )
    return pd.DataFrame(
        rows, columns=["grid_depth", "run_a", "layer_a", "depth_a", "run_b", "layer_b", "depth_b"]
    )


# --------------------------------------------------------------------------- per-layer tables


def annotation_rates(summary: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Per layer rates that compare across SAE widths, next to the summary's own numeric columns.

    DNA catalog summary (Alive, Dead, SVD-aligned, Novel): alive_fraction = Alive / (Alive + Dead),
    novel_fraction = Novel / Alive (the superposition share). Cell atlas summary (Features, Alive,
    Annotated): alive_fraction = Alive / Features, annotated_fraction = Annotated / Alive.
    """
    t = summary.copy()

    def ratio(num, den):
        num, den = t[num].astype(float), t[den].astype(float)
        return (num / den.where(den > 0)).astype(float)

    if kind == "cells":
        for c in ("Features", "Alive", "Annotated"):
            if c not in t.columns:
                raise SaeflowError(f"annotation_rates: the cell summary has no {c!r} column")
        t["alive_fraction"] = ratio("Alive", "Features")
        t["annotated_fraction"] = ratio("Annotated", "Alive")
    else:
        for c in ("Alive", "Dead", "Novel"):
            if c not in t.columns:
                raise SaeflowError(f"annotation_rates: the catalog summary has no {c!r} column")
        t["_features"] = t["Alive"].astype(float) + t["Dead"].astype(float)
        t["alive_fraction"] = ratio("Alive", "_features")
        t["novel_fraction"] = ratio("Novel", "Alive")
        t = t.drop(columns="_features")
    return t


def compare_layer_tables(
    tables: Mapping[str, pd.DataFrame],
    n_layers: Mapping[str, int],
    *,
    columns: Sequence[str] | None = None,
    max_gap: float | None = None,
) -> pd.DataFrame:
    """Per-layer tables of several runs on one depth grid (tidy; :func:`align_depth`), carrying the
    numeric columns every run has (or ``columns``, kept where present and NaN elsewhere)."""
    if columns is not None:
        tables = {
            r: t.reindex(columns=list(dict.fromkeys(["layer", *columns])))
            for r, t in tables.items()
        }
        tables = {r: t.astype({c: float for c in columns}) for r, t in tables.items()}
    return align_depth(tables, n_layers, columns=columns, max_gap=max_gap)


def head_scan_layers(scan: pd.DataFrame) -> pd.DataFrame:
    """Per (motif, layer) of a head scan: heads, best_r (and its head), best_rho (and its head),
    heads passing the registered criterion (``passes``: r >= 0.5, q < 0.05, rho >= 2, q the BH
    q-value over the run's whole head scan; a table without ``q`` predates the correction and is
    refused) and their fraction."""
    need = ["motif", "layer", "head", "r", "q", "rho", "passes"]
    miss = [c for c in need if c not in scan.columns]
    if miss:
        raise SaeflowError(f"head_scan_layers: the head scan has no column(s) {miss}")
    rows = []
    for (motif, layer), g in scan.groupby(["motif", "layer"], sort=True):
        r = pd.to_numeric(g["r"], errors="coerce")
        rho = pd.to_numeric(g["rho"], errors="coerce")
        passes = g["passes"].astype(str).str.lower().isin(["true", "1"])
        rows.append(
            dict(
                motif=motif,
                layer=int(layer),
                heads=int(len(g)),
                best_r=float(r.max()) if r.notna().any() else np.nan,
                best_r_head=int(g["head"].loc[r.idxmax()]) if r.notna().any() else -1,
                best_rho=float(rho.max()) if rho.notna().any() else np.nan,
                best_rho_head=int(g["head"].loc[rho.idxmax()]) if rho.notna().any() else -1,
                passing=int(passes.sum()),
                passing_fraction=float(passes.mean()),
            )
        )
    return pd.DataFrame(
        rows,
        columns=[
            "motif",
            "layer",
            "heads",
            "best_r",
            "best_r_head",
            "best_rho",
            "best_rho_head",
            "passing",
            "passing_fraction",
        ],
    )


def compare_head_scans(
    scans: Mapping[str, pd.DataFrame], n_layers: Mapping[str, int], *, max_gap: float | None = None
) -> pd.DataFrame:
    """:func:`head_scan_layers` of every run on one depth grid, per motif the runs share."""
    per = {r: head_scan_layers(s) for r, s in scans.items()}
    motifs = None
    for t in per.values():
        motifs = set(t.motif) if motifs is None else motifs & set(t.motif)
    if not motifs:
        raise SaeflowError(
            f"compare_head_scans: the runs scanned no motif in common "
            f"({ {r: sorted(set(t.motif)) for r, t in per.items()} })"
        )
    cols = [
        "heads",
        "best_r",
        "best_r_head",
        "best_rho",
        "best_rho_head",
        "passing",
        "passing_fraction",
    ]
    frames = []
    for m in sorted(motifs):
        al = align_depth(
            {r: t[t.motif == m].drop(columns="motif") for r, t in per.items()},
            n_layers,
            columns=cols,
            max_gap=max_gap,
        )
        al.insert(0, "motif", m)
        frames.append(al)
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- probes


def compare_probe_predictions(
    preds: Mapping[str, pd.DataFrame],
    n_layers: Mapping[str, int],
    *,
    control: str = "features",
    level: str = "sequence",
    target: str = "label",
    n_boot: int = 1000,
    seed: int = 0,
    max_gap: float | None = None,
) -> pd.DataFrame:
    """Paired AUROC deltas of every pair of runs, per depth-aligned layer pair, on the same test
    items.

    ``preds``: run -> the probe rule's ``probe_predictions.parquet`` (layer, level, target, control,
    item, label, score). Rows with ``level``/``target``/``control`` are compared; layers are paired
    by :func:`layer_pairs`; each pair of prediction sets goes through
    :func:`saeflow.compare.paired.auroc_comparison` (paired bootstrap + DeLong; the item sets must
    be equal). Columns: grid_depth, run_a, layer_a, depth_a, run_b, layer_b, depth_b, level, target,
    control, n_items, n_pos, auroc_a, auroc_b, delta, ci_low, ci_high, p_boot, n_boot_used,
    se_delong, z_delong, p_delong, ci_low_delong, ci_high_delong.
    """
    from saeflow.compare.paired import COMPARISON_COLUMNS, auroc_comparison

    sel, layers = {}, {}
    for r, p in preds.items():
        for c in ("layer", "level", "target", "control", "item", "label", "score"):
            if c not in p.columns:
                raise SaeflowError(
                    f"compare_probe_predictions: predictions of run {r!r} have no column {c!r}"
                )
        s = p[(p.level == level) & (p.target.astype(str) == target) & (p.control == control)]
        if s.empty:
            raise SaeflowError(
                f"compare_probe_predictions: run {r!r} has no predictions for level={level!r}, "
                f"target={target!r}, control={control!r} (controls there: "
                f"{sorted(p.control.unique().tolist())})"
            )
        sel[r] = s
        layers[r] = sorted(s.layer.unique().astype(int).tolist())
    pairs = layer_pairs(layers, n_layers, max_gap=max_gap)
    rows = []
    for pr in pairs.itertuples(index=False):
        a = sel[pr.run_a][sel[pr.run_a].layer == pr.layer_a]
        b = sel[pr.run_b][sel[pr.run_b].layer == pr.layer_b]
        res = auroc_comparison(a, b, names=(pr.run_a, pr.run_b), n_boot=n_boot, seed=seed)
        row = res.iloc[0].to_dict()
        row.update(pr._asdict(), level=level, target=target, control=control)
        rows.append(row)
    head = list(pairs.columns) + ["level", "target", "control"]
    cols = head + [c for c in COMPARISON_COLUMNS if c not in ("run_a", "run_b")]
    return pd.DataFrame(rows, columns=cols)


def plot_probe_comparison(table: pd.DataFrame, path, *, title: str | None = None) -> None:
    """Two panels against relative depth: each run's AUROC, and each pair's paired delta with its
    bootstrap 95% CI (DeLong p in the legend's order). PNG, written atomically."""
    import matplotlib.pyplot as plt

    from saeflow import plots  # Agg backend

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    if table.empty:
        ax1.text(
            0.5,
            0.5,
            "no layer pairs within max_gap",
            ha="center",
            va="center",
            transform=ax1.transAxes,
        )
    seen = set()
    for side in ("a", "b"):
        for run, g in table.groupby(f"run_{side}", sort=False):
            if run in seen:
                continue
            seen.add(run)
            g = g.drop_duplicates(f"layer_{side}").sort_values(f"depth_{side}")
            ax1.plot(g[f"depth_{side}"], g[f"auroc_{side}"], "o-", label=str(run))
    for (a, b), g in table.groupby(["run_a", "run_b"], sort=False):
        g = g.sort_values("grid_depth")
        err = np.vstack([g.delta - g.ci_low, g.ci_high - g.delta])
        ax2.errorbar(
            g.grid_depth, g.delta, yerr=np.nan_to_num(err), fmt="o-", capsize=3, label=f"{a} - {b}"
        )
        for x, y, p in zip(g.grid_depth, g.delta, g.p_delong):
            ax2.annotate(
                f"p={p:.2g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7
            )
    ax2.axhline(0, color="grey", lw=0.8)
    ax1.set_ylabel("test AUROC")
    ax2.set_ylabel("AUROC delta (paired 95% CI)")
    for ax in (ax1, ax2):
        ax.set_xlabel("relative depth (layer / n_layers)")
        ax.set_xlim(-0.03, 1.03)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    plots.save_figure(fig, path)


# --------------------------------------------------------------------------- organisation


def run_organisation_table(
    features: Mapping[int, pd.DataFrame], tracking: pd.DataFrame | None = None
) -> pd.DataFrame:
    """:func:`saeflow.compare.organisation.organisation_table` with the fraction columns always
    present."""
    from saeflow.compare.organisation import organisation_table

    t = organisation_table(features, tracking)
    for c in (
        "module_fraction",
        "superposition_share",
        "persistent_fraction",
        "moderate_fraction",
        "transient_fraction",
    ):
        if c not in t.columns:
            t[c] = np.nan
    return t


# --------------------------------------------------------------------------- matching


def plot_matching(table: pd.DataFrame, path, *, title: str | None = None) -> None:
    """Matched fraction of each pair against its row-shuffled null (mean +- sd), by depth."""
    import matplotlib.pyplot as plt

    from saeflow import plots  # Agg backend

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for (a, b, rows), g in table.groupby(["run_a", "run_b", "rows"], sort=False):
        g = g.sort_values("grid_depth")
        (line,) = ax.plot(g.grid_depth, g.matched_fraction, "o-", label=f"{a} vs {b} ({rows})")
        ax.errorbar(
            g.grid_depth,
            g.null_fraction_mean,
            yerr=np.nan_to_num(g.null_fraction_sd),
            fmt="x--",
            color=line.get_color(),
            alpha=0.6,
            capsize=3,
        )
    if table.empty:
        ax.text(
            0.5,
            0.5,
            "no layer pairs within max_gap",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlabel("relative depth (layer / n_layers)")
    ax.set_ylabel("matched fraction (x: shuffled null)")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.02, 1.02)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    plots.save_figure(fig, path)


# --------------------------------------------------------------------------- OV / QK audit


def audit_candidate_blocks(sae_layers: Sequence[int], n_layers: int) -> list[int]:
    """Blocks (1..n_layers) with an SAE on their read side (layer b - 1) or write side (layer b)."""
    s = {int(lyr) for lyr in sae_layers}
    return [b for b in range(1, int(n_layers) + 1) if (b - 1) in s or b in s]


def select_audit_heads(
    scan: pd.DataFrame,
    sae_layers: Sequence[int],
    n_layers: int,
    *,
    mode: str = "top",
    top: int = 6,
    n_heads: int | None = None,
) -> list[tuple[int, int]]:
    """The (block, head) pairs to audit: ``top``: the ``top`` heads of the head scan by Pearson r
    (best over motifs) among the blocks next to an SAE layer; ``all``: every head of those
    blocks."""
    blocks = audit_candidate_blocks(sae_layers, n_layers)
    if not blocks:
        raise SaeflowError(
            f"select_audit_heads: no block next to the SAE layers {list(sae_layers)}"
        )
    if mode == "all":
        if n_heads is None:
            n_heads = int(scan["head"].max()) + 1
        return [(b, h) for b in blocks for h in range(n_heads)]
    if mode != "top":
        raise SaeflowError(f"select_audit_heads: mode must be 'top' or 'all' (got {mode!r})")
    for c in ("layer", "head", "r"):
        if c not in scan.columns:
            raise SaeflowError(f"select_audit_heads: the head scan has no column {c!r}")
    s = scan[scan.layer.isin(blocks)].copy()
    s["r"] = pd.to_numeric(s["r"], errors="coerce")
    best = s.groupby(["layer", "head"], sort=True)["r"].max().dropna()
    if best.empty:
        raise SaeflowError(f"select_audit_heads: the head scan has no finite r in blocks {blocks}")
    best = best.sort_values(ascending=False, kind="stable").head(int(top))
    return sorted((int(lyr), int(h)) for lyr, h in best.index)


def motif_directions(
    ablation: Mapping[int, pd.DataFrame], decoders: Mapping[int, np.ndarray]
) -> pd.DataFrame:
    """The decoder row of each layer's best motif feature (ablation.tsv's motif, feature): one row
    per (sae_layer, motif) with the vector in ``vector``."""
    rows = []
    for layer, t in sorted(ablation.items()):
        for c in ("motif", "feature"):
            if c not in t.columns:
                raise SaeflowError(
                    f"motif_directions: the ablation table of layer {layer} has no {c!r} column"
                )
        W = np.asarray(decoders[layer])
        for r in t.itertuples(index=False):
            f = int(r.feature)
            if not 0 <= f < W.shape[0]:
                raise SaeflowError(
                    f"motif_directions: layer {layer} feature {f} is outside the SAE's "
                    f"{W.shape[0]} "
                    "latents; is the ablation table from another SAE?"
                )
            rows.append(dict(sae_layer=int(layer), motif=str(r.motif), feature=f, vector=W[f]))
    return pd.DataFrame(rows, columns=["sae_layer", "motif", "feature", "vector"])


def audit_run(
    weights: Mapping[int, Mapping],
    heads: Sequence[tuple[int, int]],
    directions: pd.DataFrame,
    *,
    k: int = 5,
) -> pd.DataFrame:
    """OV/QK audit (:func:`saeflow.compare.circuits.audit_head`) of each (block, head) against the
    motif decoder directions at its read side (SAE layer block - 1) and write side (SAE layer
    block).

    ``weights``: block -> :meth:`ModelAdapter.head_weights` dict. Returns the audit columns plus
    side, sae_layer, motif, feature; the ``direction`` name is ``<motif> f<feature> L<sae_layer>
    <side>``."""
    from saeflow.compare.circuits import AUDIT_COLUMNS, audit_head

    frames = []
    for block, h in heads:
        w = weights[block]
        for side, sl in (("read", block - 1), ("write", block)):
            d = directions[directions.sae_layer == sl]
            if d.empty:
                continue
            names = [f"{m} f{f} L{sl} {side}" for m, f in zip(d.motif, d.feature)]
            vec = {n: v for n, v in zip(names, d.vector)}
            t = audit_head(
                *(np.asarray(w[n])[h] for n in ("W_Q", "W_K", "W_V", "W_O")),
                vec,
                k=k,
                layer=block,
                head=h,
            )
            t["side"], t["sae_layer"], t["motif"], t["feature"] = (
                side,
                sl,
                d.motif.to_numpy(),
                d.feature.to_numpy(),
            )
            frames.append(t)
    if not frames:
        raise SaeflowError(
            "audit_run: no (head, direction) pair: no motif feature at the layers next to the "
            "heads "
            f"{list(heads)} (SAE layers with features: {sorted(set(directions.sae_layer))})"
        )
    return pd.concat(frames, ignore_index=True)[
        AUDIT_COLUMNS + ["side", "sae_layer", "motif", "feature"]
    ]


def matching_rows(rows: str, run_a: Mapping, run_b: Mapping) -> str | None:
    """The shared rows two runs' features can be matched over, or None where matching is not
    meaningful: ``sequence`` (per-sequence / per-cell mean codes) for runs on the same dataset,
    ``gene`` (per-gene mean codes, genes matched by name) for two cell runs. ``rows``: auto,
    sequence or gene; runs are mappings with ``dataset`` and ``kind`` (the same rule as the
    workflow's config check)."""
    if rows not in ("auto", "sequence", "gene"):
        raise SaeflowError(f"matching_rows: rows must be auto, sequence or gene (got {rows!r})")
    same = run_a["dataset"] == run_b["dataset"]
    if rows == "sequence" or (rows == "auto" and same):
        return "sequence" if same else None
    return "gene" if run_a["kind"] == "cells" and run_b["kind"] == "cells" else None


MATCH_SUMMARY_COLUMNS = [
    "grid_depth",
    "run_a",
    "layer_a",
    "depth_a",
    "run_b",
    "layer_b",
    "depth_b",
    "rows",
    "n_rows",
    "n_a",
    "n_b",
    "alive_a",
    "alive_b",
    "threshold",
    "matched",
    "matched_fraction",
    "null_fraction_mean",
    "null_fraction_sd",
    "p_empirical",
    "mutual_best",
    "mutual_above",
    "null_mutual_above_mean",
    "n_null",
]


def match_pair(
    A, B, pair: Mapping, rows: str, *, threshold: float = 0.5, n_null: int = 19, seed: int = 0
) -> tuple[dict, pd.DataFrame]:
    """:func:`saeflow.compare.matching.match_features` of one depth-aligned layer pair: the summary
    row (:data:`MATCH_SUMMARY_COLUMNS`) and run A's per-feature matches (with the pair's keys)."""
    from saeflow.compare.matching import match_features

    fa, _fb, summ = match_features(A, B, threshold=threshold, n_null=n_null, seed=seed)
    row = {
        **dict(pair),
        "rows": rows,
        **{k: v for k, v in summ.items() if k in MATCH_SUMMARY_COLUMNS},
    }
    feats = fa.assign(
        grid_depth=pair["grid_depth"],
        run_a=pair["run_a"],
        layer_a=pair["layer_a"],
        run_b=pair["run_b"],
        layer_b=pair["layer_b"],
    )
    return {c: row.get(c) for c in MATCH_SUMMARY_COLUMNS}, feats

"""Depth normalisation: line up the layers of models of different depth.

Layer numbering follows the activation stores and :class:`saeflow.models.base.ModelAdapter`:
layer 0 is the embedding output, layer ``L`` (1..n_layers) the output of block ``L``. The relative
depth of layer ``L`` is ``L / n_layers``, so 0 is the embeddings and 1 the last block of every
model, whatever its number of blocks.

:func:`align_depth` puts per-layer tables of several runs (SAE quality, annotation rates, probe
AUROCs, CTCF scan summaries: anything with a ``layer`` column and numeric columns) on one common
grid of relative depths, as a tidy table (one row per grid point and run). Two methods:

``nearest`` (default)
    each grid point takes the run's row whose depth is closest (ties: the shallower layer). The
    values are real measurements of one layer; ``layer`` and ``depth`` say which, and ``gap`` =
    |depth - grid_depth| how far it is from the grid point. With ``max_gap`` set, rows further
    than that become NaN (a run that only trained SAEs on a few layers does not pretend to cover
    the others; this applies to ``linear`` too).
``linear``
    each numeric column is linearly interpolated in depth between the run's two neighbouring
    layers (NaN values of a column are skipped; no extrapolation: outside the run's depth range
    the value is NaN). ``layer`` is then the nearest layer (for reference only).

The default grid is the relative depths of the run with the fewest layers in its table, so every
grid point is a real layer of the shallowest model and the deeper model contributes its nearest
(or interpolated) layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from saeflow.utils import SaeflowError

ALIGN_KEYS = ["grid_depth", "run", "layer", "depth", "gap"]


def relative_depth(layers, n_layers: int) -> np.ndarray:
    """``layer / n_layers`` for each layer (0 = embeddings, 1 = the last block)."""
    try:
        n = int(n_layers)
    except (TypeError, ValueError):
        raise SaeflowError(
            f"relative_depth: n_layers must be a positive integer (got {n_layers!r})"
        ) from None
    if n <= 0 or n != n_layers:
        raise SaeflowError(
            f"relative_depth: n_layers must be a positive integer (got {n_layers!r})"
        )
    arr = np.asarray(layers, dtype=float)
    if arr.size and (not np.isfinite(arr).all() or (arr != np.round(arr)).any()):
        raise SaeflowError(
            f"relative_depth: layers must be integers (got {np.unique(arr)[:5].tolist()})"
        )
    bad = arr[(arr < 0) | (arr > n)]
    if bad.size:
        raise SaeflowError(
            f"relative_depth: layers {sorted(set(bad.astype(int).tolist()))[:5]} are outside "
            f"0..{n} (the model has {n} layers; layer 0 is the embeddings)"
        )
    return arr / n


def add_depth(table: pd.DataFrame, n_layers: int, *, layer_col: str = "layer") -> pd.DataFrame:
    """A copy of ``table`` with a ``depth`` column (:func:`relative_depth` of ``layer_col``)."""
    if layer_col not in table.columns:
        raise SaeflowError(
            f"add_depth: the table has no {layer_col!r} column "
            f"(it has: {', '.join(map(str, table.columns))})"
        )
    out = table.copy()
    out["depth"] = relative_depth(out[layer_col].to_numpy(), n_layers)
    return out


def _runs(tables, n_layers) -> list[tuple[str, pd.DataFrame, int]]:
    if not isinstance(tables, Mapping) or not tables:
        raise SaeflowError("align_depth: tables must be a non-empty mapping run -> per-layer table")
    if not isinstance(n_layers, Mapping):
        raise SaeflowError("align_depth: n_layers must be a mapping run -> number of layers")
    missing = [r for r in tables if r not in n_layers]
    if missing:
        raise SaeflowError(
            f"align_depth: no n_layers for runs {missing} (given for: {list(n_layers)})"
        )
    return [(str(r), t, n_layers[r]) for r, t in tables.items()]


def align_depth(
    tables: Mapping[str, pd.DataFrame],
    n_layers: Mapping[str, int],
    *,
    columns: Sequence[str] | None = None,
    grid: Sequence[float] | None = None,
    method: str = "nearest",
    max_gap: float | None = None,
    layer_col: str = "layer",
) -> pd.DataFrame:
    """Per-layer tables of several runs on a common relative-depth grid (see the module docstring).

    ``tables``: run name -> table with one row per layer (``layer_col``) and value columns;
    ``n_layers``: run name -> the model's number of blocks; ``columns``: the value columns to carry
    (default: the numeric columns every table shares, ``layer_col`` excluded); ``grid``: relative
    depths in [0, 1] (default: the depths of the run with the fewest rows).

    Returns a tidy table: grid_depth, run, layer, depth, gap, then ``columns``; rows ordered by
    grid depth, then run in the order given.
    """
    if method not in ("nearest", "linear"):
        raise SaeflowError(f"align_depth: method must be 'nearest' or 'linear' (got {method!r})")
    runs = _runs(tables, n_layers)
    prepared = []
    for run, t, n in runs:
        if len(t) == 0:
            raise SaeflowError(f"align_depth: the table of run {run!r} is empty")
        t = add_depth(t, n, layer_col=layer_col)
        dup = t[layer_col][t[layer_col].duplicated()].unique()
        if len(dup):
            raise SaeflowError(
                f"align_depth: run {run!r} has several rows for layers {dup[:5].tolist()}; "
                "give one row per layer (filter by SAE / task first)"
            )
        prepared.append((run, t.sort_values("depth", kind="stable").reset_index(drop=True)))
    if columns is None:
        shared = None
        for _, t in prepared:
            num = {
                c
                for c in t.columns
                if pd.api.types.is_numeric_dtype(t[c]) and c not in (layer_col, "depth")
            }
            shared = num if shared is None else shared & num
        columns = [c for c in prepared[0][1].columns if c in shared]
    else:
        columns = list(columns)
        for run, t in prepared:
            miss = [c for c in columns if c not in t.columns]
            if miss:
                raise SaeflowError(
                    f"align_depth: run {run!r} has no columns {miss} "
                    f"(it has: {', '.join(map(str, t.columns))})"
                )
    if grid is None:
        grid = min(prepared, key=lambda rt: len(rt[1]))[1]["depth"].to_numpy()
    grid = np.unique(np.asarray(grid, dtype=float))
    if grid.size == 0 or not np.isfinite(grid).all() or grid.min() < 0 or grid.max() > 1:
        raise SaeflowError(
            f"align_depth: grid depths must be finite values in [0, 1] (got {grid[:5].tolist()})"
        )
    frames = []
    for run, t in prepared:
        d = t["depth"].to_numpy()
        # nearest row: ties go to the shallower layer (searchsorted + compare)
        j = (
            np.clip(np.searchsorted(d, grid), 1, max(1, len(d) - 1))
            if len(d) > 1
            else np.zeros(len(grid), int)
        )
        if len(d) > 1:
            left = j - 1
            j = np.where(np.abs(grid - d[left]) <= np.abs(d[j] - grid), left, j)
        near = t.iloc[j].reset_index(drop=True)
        out = pd.DataFrame(
            {
                "grid_depth": grid,
                "run": run,
                "layer": near[layer_col].to_numpy(),
                "depth": near["depth"].to_numpy(),
                "gap": np.abs(near["depth"].to_numpy() - grid),
            }
        )
        for c in columns:
            if method == "nearest" or not pd.api.types.is_numeric_dtype(t[c]):
                out[c] = near[c].to_numpy()
            else:
                v = t[c].to_numpy(dtype=float)
                ok = np.isfinite(v)
                vals = np.full(len(grid), np.nan)
                if ok.any():
                    inside = (grid >= d[ok].min()) & (grid <= d[ok].max())
                    vals[inside] = np.interp(grid[inside], d[ok], v[ok])
                out[c] = vals
        if max_gap is not None:
            far = out["gap"].to_numpy() > float(max_gap) + 1e-12
            out.loc[far, columns] = np.nan
        frames.append(out)
    res = pd.concat(frames, ignore_index=True)
    order = {r: i for i, (r, _) in enumerate(prepared)}
    res["_o"] = res["run"].map(order)
    return (
        res.sort_values(["grid_depth", "_o"], kind="stable")
        .drop(columns="_o")
        .reset_index(drop=True)
    )


def side_by_side(aligned: pd.DataFrame, column: str) -> pd.DataFrame:
    """One value column of :func:`align_depth` as a wide table: one row per grid depth, one column
    per run (and ``<run>:layer`` columns saying which layer each value came from)."""
    for c in ("grid_depth", "run", "layer", column):
        if c not in aligned.columns:
            raise SaeflowError(f"side_by_side: the aligned table has no column {c!r}")
    runs = list(dict.fromkeys(aligned["run"]))
    vals = aligned.pivot(index="grid_depth", columns="run", values=column)[runs]
    layers = aligned.pivot(index="grid_depth", columns="run", values="layer")[runs]
    layers.columns = [f"{r}:layer" for r in runs]
    out = pd.concat([vals, layers], axis=1).reset_index()
    out.columns.name = None
    return out


def plot_by_depth(
    tables: Mapping[str, pd.DataFrame],
    n_layers: Mapping[str, int],
    columns: Sequence[str],
    path,
    *,
    layer_col: str = "layer",
    title: str | None = None,
) -> None:
    """One panel per column: each run's per-layer values against relative depth (its real layers,
    not a grid), so models of different depth share one x axis. PNG, written atomically."""
    import matplotlib.pyplot as plt

    from saeflow import plots  # sets the Agg backend

    runs = _runs(tables, n_layers)
    columns = list(columns)
    if not columns:
        raise SaeflowError("plot_by_depth: no columns to plot")
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.4), squeeze=False)
    for run, t, n in runs:
        t = add_depth(t, n, layer_col=layer_col).sort_values("depth")
        for ax, c in zip(axes[0], columns):
            if c not in t.columns:
                raise SaeflowError(f"plot_by_depth: run {run!r} has no column {c!r}")
            ax.plot(
                t["depth"], pd.to_numeric(t[c], errors="coerce"), "o-", label=f"{run} ({n} layers)"
            )
    for ax, c in zip(axes[0], columns):
        ax.set_xlabel("relative depth (layer / n_layers)")
        ax.set_title(str(c))
        ax.set_xlim(-0.03, 1.03)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    plots.save_figure(fig, path)

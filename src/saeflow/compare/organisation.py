"""Feature-organisation statistics that can be compared across models (per layer, by depth).

Built on what the atlas already writes per layer (:mod:`saeflow.cells.analysis`:
``features.parquet``
with columns feature, alive, module, svd_aligned; the cross-layer tracking table of
:func:`saeflow.sae.modules.track_features` with columns layer, feature, class, persistence_*). Every
statistic is a fraction of the layer's *alive* features, so SAEs of different widths compare:

``module_fraction``
    alive features in a co-activation module (``module >= 0``) / alive.
``superposition_share``
    alive features *not* aligned with any of the top singular directions of the activations
    (``svd_aligned`` False: max |cos| of the decoder row with the top-k right singular vectors <=
    the atlas' ``svd_threshold``) / alive. These are the "novel" features of the atlas: directions
    a rank-k linear code (PCA) does not have, which an SAE can only represent by packing more
    features than principal axes, i.e. the operational measure of superposition used here (not a
    measurement of interference between features).
``persistent_fraction`` / ``moderate_fraction`` / ``transient_fraction``
    classes of the cross-layer tracking (decoder cosine with the best match in the next layer:
    >= 0.9 / >= 0.7 / below) over the alive tracked features of the layer; NaN for the last layer
    (no next layer) or without tracking.
``mean_persistence_<t>``
    mean chain length at cosine >= t (consecutive later layers a feature persists), when tracked.

:func:`organisation_table` gives one row per layer; put runs side by side with
:func:`saeflow.compare.depth.align_depth` after adding ``n_layers``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from saeflow.utils import SaeflowError

CLASSES = ("persistent", "moderate", "transient")


def layer_organisation(
    features: pd.DataFrame, tracking: pd.DataFrame | None = None, *, layer=None
) -> dict:
    """The organisation statistics of one layer (module doc). ``features``: the layer's per-feature
    table (needs ``alive``; ``module`` and ``svd_aligned`` are used when present, else the statistic
    is NaN); ``tracking``: this layer's rows of the tracking table (or the whole table: rows of
    other layers are ignored when ``layer`` is given)."""
    if "alive" not in features.columns:
        raise SaeflowError(
            f"layer_organisation: the feature table has no 'alive' column "
            f"(it has: {', '.join(map(str, features.columns))})"
        )
    alive = features["alive"].to_numpy(bool)
    n = int(alive.sum())
    row = {"layer": layer, "features": int(len(features)), "alive": n}

    def frac(mask):
        return float((mask & alive).sum() / n) if n else float("nan")

    if "module" in features.columns:
        mod = pd.to_numeric(features["module"], errors="coerce").fillna(-1).to_numpy()
        row["module_fraction"] = frac(mod >= 0)
        row["modules"] = int(np.unique(mod[(mod >= 0) & alive]).size)
    else:
        row["module_fraction"], row["modules"] = float("nan"), np.nan
    row["superposition_share"] = (
        frac(~features["svd_aligned"].to_numpy(bool)) if "svd_aligned" in features else float("nan")
    )
    tr = tracking
    if tr is not None and len(tr):
        for c in ("feature", "class"):
            if c not in tr.columns:
                raise SaeflowError(f"layer_organisation: the tracking table has no {c!r} column")
        if layer is not None and "layer" in tr.columns:
            tr = tr[tr["layer"] == layer]
    if tr is not None and len(tr):
        ids = features["feature"].to_numpy() if "feature" in features else np.arange(len(features))
        alive_ids = set(ids[alive].tolist())
        t = tr[tr["feature"].isin(alive_ids) & (tr["class"] != "dead")]
        for cls in CLASSES:
            row[f"{cls}_fraction"] = float((t["class"] == cls).mean()) if len(t) else float("nan")
        for c in sorted(c for c in t.columns if str(c).startswith("persistence_")):
            row[f"mean_{c}"] = float(t[c].mean()) if len(t) else float("nan")
    else:
        for cls in CLASSES:
            row[f"{cls}_fraction"] = float("nan")
    return row


def organisation_table(
    features: Mapping[int, pd.DataFrame], tracking: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row of :func:`layer_organisation` per layer
    (``features``: layer -> per-feature table)."""
    if not features:
        raise SaeflowError("organisation_table: no layers")
    rows = [layer_organisation(f, tracking, layer=int(L)) for L, f in sorted(features.items())]
    return pd.DataFrame(rows)


def run_organisation(table: pd.DataFrame) -> dict:
    """Whole-run numbers from :func:`organisation_table`: each fraction pooled over layers, weighted
    by the layer's alive features (layers where the statistic is NaN are left out)."""
    if "alive" not in table.columns or len(table) == 0:
        raise SaeflowError("run_organisation: needs the per-layer table of organisation_table")
    w = table["alive"].to_numpy(float)
    out = {"layers": int(len(table)), "alive": int(w.sum())}
    for c in table.columns:
        if c.endswith("_fraction") or c == "superposition_share":
            v = table[c].to_numpy(float)
            ok = np.isfinite(v) & (w > 0)
            out[c] = float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else float("nan")
    return out

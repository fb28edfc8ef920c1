"""Feature structure across and within layers: cross-layer tracking and co-activation modules.

* :func:`track_features`: for SAEs of consecutive layers, each feature's best match (max cosine of
  decoder rows) in the next layer; classes persistent / moderate / transient and the length of each
  feature's chain of matches.
* :func:`coactivation_modules`: positive pointwise mutual information of feature co-occurrence
  (within a token or a cell), a graph of strongly associated pairs, and its communities (Leiden).

Both work on 18 layers x 4608 latents x d = 1152 on a laptop: decoders are loaded two at a time and
compared in row blocks (one block of cosines, block x d_sae floats, in RAM); co-occurrence is a
dense d_sae x d_sae count matrix (170 MB at 4608) or is computed from a sparse binary matrix."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from saeflow.columns import TRACK_THRESHOLDS
from saeflow.decoder import decoder_rows
from saeflow.utils import SaeflowError

log = logging.getLogger(__name__)


# --- cross-layer tracking ----------------------------------------------------------------


def best_matches(
    w_a: np.ndarray, w_b: np.ndarray, *, block: int = 1024, alive_b: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For each row of unit-norm ``w_a``, the row of ``w_b`` with the largest cosine: (index,
    cosine).

    Signed cosine: SAE codes are non-negative, so a decoder row and its negation write opposite
    directions and are different features. Blocked over rows of ``w_a`` (one block x len(w_b)
    float32 matrix at a time). Rows of ``w_b`` not in ``alive_b`` cannot be matched."""
    if w_a.shape[1] != w_b.shape[1]:
        raise SaeflowError(
            f"decoders of different widths ({w_a.shape[1]} vs {w_b.shape[1]}) cannot be compared"
        )
    idx = np.zeros(len(w_a), np.int64)
    cos = np.full(len(w_a), -np.inf, np.float32)
    if alive_b is not None:
        keep = np.flatnonzero(np.asarray(alive_b, bool))
        w_b = w_b[keep]
    else:
        keep = None
    if len(w_b) == 0:
        return np.full(len(w_a), -1), np.full(len(w_a), np.nan, np.float32)
    wbt = np.ascontiguousarray(w_b.T)
    for i in range(0, len(w_a), block):
        c = w_a[i : i + block] @ wbt
        j = c.argmax(axis=1)
        idx[i : i + block] = j
        cos[i : i + block] = c[np.arange(len(j)), j]
    if keep is not None:
        idx = keep[idx]
    return idx, cos


def track_features(
    decoders, *, thresholds: tuple[float, float] = TRACK_THRESHOLDS, alive=None, block: int = 1024
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Follow features through consecutive layers by decoder cosine.

    ``decoders``: {layer: decoder} (or (layer, decoder) pairs) where a decoder is a (d_sae, d_in)
    array/tensor, an SAE, or a saved SAE directory (loaded when needed; two layers in memory at a
    time). Layers are compared in sorted order, each with the next one given (the "consecutive"
    layers are those the caller trained SAEs for). ``alive``: optional {layer: bool mask}; a dead
    feature gets class "dead" and is never anyone's match.

    For each feature f of layer l (not the last), ``match`` = argmax cosine in layer l', ``cosine``
    its value, and the class by the first (low) and second (high) threshold: ``transient`` (cosine
    < low: no match at 0.7), ``moderate`` (low <= cosine < high), ``persistent`` (cosine >= high).
    ``persistence_<t>``: the number of consecutive later layers the chain f -> match(f) ->
    match(match(f)) ... stays at cosine >= t (0 = not matched in the next layer); computed backwards
    from the last pair, so following chains costs nothing.

    Returns (features, counts): one row per (layer, feature) of every layer but the last, and one
    row per layer pair with the number of features per class and the mean persistence.
    """
    items = sorted(
        decoders.items() if isinstance(decoders, Mapping) else list(decoders), key=lambda kv: kv[0]
    )
    if len(items) < 2:
        raise SaeflowError(
            f"track_features needs decoders of at least two layers (got {len(items)})"
        )
    lo, hi = thresholds
    if not lo <= hi:
        raise SaeflowError(f"track_features: thresholds must be increasing (got {thresholds})")
    alive = dict(alive or {})
    pairs = []
    w_next = decoder_rows(items[0][1], unit_norm=True)
    for (la, _), (lb, objb) in zip(items[:-1], items[1:]):
        w_a, w_next = w_next, decoder_rows(objb, unit_norm=True)
        alive_a = np.asarray(alive.get(la, np.ones(len(w_a), bool)), bool)
        alive_b = np.asarray(alive.get(lb, np.ones(len(w_next), bool)), bool)
        for lyr, a, w in ((la, alive_a, w_a), (lb, alive_b, w_next)):
            if len(a) != len(w):
                raise SaeflowError(
                    f"track_features: alive mask of layer {lyr} has {len(a)} entries for {len(w)} "
                    "features"
                )
        idx, cos = best_matches(w_a, w_next, block=block, alive_b=alive_b)
        pairs.append((la, lb, idx, cos, alive_a))
        log.info("layers %s -> %s: %d features compared", la, lb, len(w_a))
    # chains, from the last pair backwards: persistence[l][f] = matched * (1 +
    # persistence[l+1][match])
    frames = []
    nxt = {t: None for t in thresholds}
    for la, lb, idx, cos, alive_a in reversed(pairs):
        cls = np.where(
            cos >= hi, "persistent", np.where(cos >= lo, "moderate", "transient")
        ).astype(object)
        cls[~alive_a] = "dead"
        df = pd.DataFrame(
            {
                "layer": la,
                "feature": np.arange(len(idx)),
                "next_layer": lb,
                "match": idx,
                "cosine": cos.astype(np.float64),
                "class": cls,
            }
        )
        for t in thresholds:
            matched = alive_a & (np.nan_to_num(cos, nan=-np.inf) >= t)
            chain = matched.astype(np.int64)
            if nxt[t] is not None:
                chain = np.where(matched, 1 + nxt[t][np.clip(idx, 0, None)], 0)
            df[f"persistence_{t:g}"] = chain
            nxt[t] = chain
        frames.append(df)
    features = pd.concat(frames[::-1], ignore_index=True)
    counts = (
        features.groupby(["layer", "next_layer"])["class"]
        .value_counts()
        .unstack(fill_value=0)
        .reindex(columns=["persistent", "moderate", "transient", "dead"], fill_value=0)
        .reset_index()
    )
    live = features[features["class"] != "dead"].groupby(["layer", "next_layer"])
    for t in thresholds:  # over the alive features of the layer
        mean = live[f"persistence_{t:g}"].mean()
        counts[f"mean_persistence_{t:g}"] = [
            mean.get((a, b), np.nan) for a, b in zip(counts.layer, counts.next_layer)
        ]
    counts.columns.name = None
    return features, counts


# --- co-activation modules -------------------------------------------------------------------


def cooccurrence(binary, block: int = 65536) -> tuple[np.ndarray, int]:
    """(C, n): C[i, j] = units (rows of ``binary``) where features i and j are both active; n =
    rows.

    ``binary``: (units x F) sparse or dense; nonzero = active. Units are tokens (features on the
    same token) or cells (e.g. ``CellFeatureStats.cell_fires >= m``: features active in the same
    cell). Computed as B^T B in blocks of rows; the diagonal holds each feature's count."""
    import scipy.sparse as sp

    b = binary.tocsr() if sp.issparse(binary) else sp.csr_matrix(np.asarray(binary))
    n, F = b.shape
    c = np.zeros((F, F), np.int64)
    for i in range(0, n, block):
        x = b[i : i + block]
        x = sp.csr_matrix((np.ones(x.nnz, np.int32), x.indices, x.indptr), shape=x.shape)
        x.eliminate_zeros()
        p = (x.T @ x).tocoo()
        c[p.row, p.col] += p.data
    return c, n


def pmi_edges(
    cooc: np.ndarray, n_units: int, *, min_count: int = 5, threshold: float = 0.0
) -> pd.DataFrame:
    """Feature pairs i < j with positive pointwise mutual information above ``threshold``.

    PMI(i, j) = log( C_ij n / (C_ii C_jj) ), natural log: how many times more often i and j fire
    together than they would if independent (PMI = log 2 = 0.69: twice as often). Only positive PMI
    (co-activation, not avoidance) is kept, and only pairs seen together at least ``min_count``
    times: PMI of rare pairs is dominated by noise (one chance co-occurrence of two rare features
    gives a huge PMI). Columns: a, b, count, pmi.
    """
    cooc = np.asarray(cooc)
    if cooc.ndim != 2 or cooc.shape[0] != cooc.shape[1]:
        raise SaeflowError(f"co-occurrence matrix must be square (got shape {cooc.shape})")
    diag = np.diag(cooc).astype(np.float64)
    iu, ju = np.nonzero(np.triu(cooc >= max(1, min_count), k=1))
    cij = cooc[iu, ju].astype(np.float64)
    pmi = np.log(cij * n_units / (diag[iu] * diag[ju]))
    keep = pmi > max(threshold, 0.0)
    return pd.DataFrame(
        {"a": iu[keep], "b": ju[keep], "count": cij[keep].astype(np.int64), "pmi": pmi[keep]}
    )


def coactivation_modules(
    cooc: np.ndarray,
    n_units: int,
    *,
    min_count: int = 5,
    pmi_threshold: float = 1.0,
    min_size: int = 3,
    resolution: float = 1.0,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Modules of co-activating features: Leiden communities of the PMI graph.

    Graph: one vertex per feature, an edge for each pair of :func:`pmi_edges` (count >=
    ``min_count``, PMI > ``pmi_threshold``) weighted by its PMI. Communities: ``leidenalg`` with the
    RBConfiguration quality (modularity when ``resolution`` = 1), iterated to convergence, seeded,
    so the same input gives the same modules. Communities smaller than ``min_size`` features are not
    modules (isolated features are singletons). Modules are numbered 0, 1, ... by decreasing size
    (ties: smallest feature first).

    Returns (modules, membership, edges): modules: module, size, features (comma-separated ids);
    membership: feature, module (-1 = none); edges: :func:`pmi_edges`.
    """
    import igraph as ig
    import leidenalg

    F = np.asarray(cooc).shape[0]
    edges = pmi_edges(cooc, n_units, min_count=min_count, threshold=pmi_threshold)
    member = np.full(F, -1, np.int64)
    if len(edges):
        g = ig.Graph(n=F, edges=list(zip(edges.a.tolist(), edges.b.tolist())))
        g.es["weight"] = edges.pmi.tolist()
        part = leidenalg.find_partition(
            g,
            leidenalg.RBConfigurationVertexPartition,
            weights="weight",
            resolution_parameter=resolution,
            seed=seed,
            n_iterations=-1,
        )
        comms = [sorted(c) for c in part if len(c) >= min_size]
        comms.sort(key=lambda c: (-len(c), c[0]))
        for m, c in enumerate(comms):
            member[c] = m
    else:
        comms = []
    modules = pd.DataFrame(
        {
            "module": np.arange(len(comms), dtype=np.int64),
            "size": np.array([len(c) for c in comms], dtype=np.int64),
            "features": [",".join(map(str, c)) for c in comms],
        }
    )
    membership = pd.DataFrame({"feature": np.arange(F), "module": member})
    log.info("%d PMI edges, %d modules of >= %d features", len(edges), len(comms), min_size)
    return modules, membership, edges


def module_terms(membership: pd.DataFrame, feature_terms) -> pd.DataFrame:
    """Each module's most common annotation term among its features.

    ``feature_terms``: a DataFrame with columns feature, term (one row per significant term of a
    feature, e.g. enrichment rows with q < 0.05) or a mapping feature -> terms. A feature counts
    once per term. Ties go to the alphabetically first term. Columns: module, size, term, count
    (features of the module with the term), fraction (count / size); term "" when no feature is
    annotated."""
    if isinstance(feature_terms, pd.DataFrame):
        for c in ("feature", "term"):
            if c not in feature_terms.columns:
                raise SaeflowError(
                    f"module_terms: term table has no column {c!r} "
                    f"(it has: {', '.join(map(str, feature_terms.columns))})"
                )
        ft = feature_terms[["feature", "term"]].drop_duplicates()
    else:
        ft = pd.DataFrame(
            [(f, t) for f, ts in dict(feature_terms).items() for t in set(ts)],
            columns=["feature", "term"],
        )
    mem = membership[membership.module >= 0]
    sizes = mem.groupby("module").size()
    j = mem.merge(ft, on="feature")
    counts = j.groupby(["module", "term"]).size().reset_index(name="count")
    counts = counts.sort_values(
        ["module", "count", "term"], ascending=[True, False, True], kind="stable"
    )
    best = counts.drop_duplicates("module").set_index("module")
    out = pd.DataFrame({"module": sizes.index.to_numpy(), "size": sizes.to_numpy()})
    out["term"] = out.module.map(best["term"]).fillna("").astype(str)
    out["count"] = out.module.map(best["count"]).fillna(0).astype(np.int64)
    out["fraction"] = out["count"] / out["size"]
    return out

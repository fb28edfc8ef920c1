"""Per-source balancing for pooled datasets (e.g. K562 control cells + Tabula Sapiens tissues).

When an SAE is trained on a pool, the largest source dominates every epoch. Two tools give each
source an equal share:

* :func:`source_weights`: a sampling weight per row, w_i = 1 / (S n_{s(i)}) (S sources, n_s rows of
  source s), optionally proportional to a per-row size (e.g. tokens per cell:
  w_i = size_i / (S size_{s(i)})), so every source carries total weight 1 / S; weights sum to 1.
  For weighted sampling with replacement (``rng.choice(n, p=w)``, a torch WeightedRandomSampler).
* :func:`balanced_index`: an explicit index for one epoch in which every source contributes the same
  number of rows, ``per_source`` (default: the smallest source's size, so nothing is repeated):
  sources larger than that are subsampled without replacement; smaller ones are repeated whole
  and topped up without replacement (needs ``replace=True``, otherwise an error names them). With
  ``cap`` instead, each source contributes min(n_s, cap) rows without replacement: big sources
  are cut to the cap, small ones kept whole (a softer balance that never repeats a row).

Where it plugs in (not wired yet): SAE training streams rows from a :class:`saeflow.sae.data.RowSet`
built from one [start, end) token range per training cell (``split_ranges`` in
``scripts/train_sae.py``). Balancing is per cell: ``train = train[balanced_index(sources of the
training cells, ...)]`` before ``train_sae`` -- a RowSet accepts repeated ranges (an oversampled
cell's tokens appear once per copy), the Feistel shuffle of :class:`~saeflow.sae.data.BatchStream`
is unchanged, and the number of steps follows the balanced epoch. Sources contribute equal *cells*;
with cells of very different lengths, weigh by tokens with :func:`source_weights` (``sizes``)
instead. The test ranges stay unbalanced (evaluate per source instead)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from saeflow.utils import SaeflowError


def _codes(sources, name: str) -> tuple[np.ndarray, np.ndarray]:
    s = pd.Series(np.asarray(sources, dtype=object).reshape(-1))
    if len(s) == 0:
        raise SaeflowError(f"{name}: no rows")
    if s.isna().any():
        raise SaeflowError(f"{name}: {int(s.isna().sum())} rows have no source label")
    codes, uniq = pd.factorize(s.astype(str), sort=True)
    return codes, np.asarray(uniq)


def source_weights(sources, sizes=None) -> np.ndarray:
    """Per-row sampling weights giving every source equal total weight (module doc); sums to 1."""
    codes, uniq = _codes(sources, "source_weights")
    S = len(uniq)
    if sizes is None:
        sizes = np.ones(len(codes))
    else:
        sizes = np.asarray(sizes, dtype=float).reshape(-1)
        if sizes.shape != codes.shape:
            raise SaeflowError(f"source_weights: {sizes.size} sizes for {codes.size} rows")
        if not np.isfinite(sizes).all() or (sizes < 0).any():
            raise SaeflowError("source_weights: sizes must be finite and >= 0")
    tot = np.bincount(codes, weights=sizes, minlength=S)
    empty = uniq[tot <= 0]
    if empty.size:
        raise SaeflowError(f"source_weights: sources {empty[:5].tolist()} have total size 0")
    return sizes / (S * tot[codes])


def balanced_index(
    sources,
    *,
    per_source: int | None = None,
    cap: int | None = None,
    replace: bool = False,
    seed: int = 0,
) -> np.ndarray:
    """Row indices of one balanced epoch (module doc), sorted
    (read order; shuffle when batching)."""
    codes, uniq = _codes(sources, "balanced_index")
    if per_source is not None and cap is not None:
        raise SaeflowError("balanced_index: give per_source or cap, not both")
    counts = np.bincount(codes, minlength=len(uniq))
    rng = np.random.default_rng(seed)
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    if cap is not None:
        if int(cap) < 1:
            raise SaeflowError(f"balanced_index: cap must be >= 1 (got {cap})")
        take = np.minimum(counts, int(cap))
    else:
        k = int(counts.min()) if per_source is None else int(per_source)
        if k < 1:
            raise SaeflowError(f"balanced_index: per_source must be >= 1 (got {per_source})")
        small = uniq[counts < k]
        if small.size and not replace:
            raise SaeflowError(
                f"balanced_index: sources {small[:5].tolist()} have fewer than {k} rows "
                f"({counts[counts < k][:5].tolist()}); pass replace=True to repeat their rows, "
                "or a smaller per_source, or cap"
            )
        take = np.full(len(uniq), k)
    out = []
    for j in range(len(uniq)):
        rows = order[starts[j] : starts[j + 1]]
        t = int(take[j])
        reps, rest = divmod(t, rows.size)
        out.append(np.tile(rows, reps))
        out.append(rng.choice(rows, rest, replace=False))
    return np.sort(np.concatenate(out)).astype(np.int64)


def source_counts(sources, index=None) -> pd.DataFrame:
    """Rows per source in the pool and (given ``index``) in a balanced epoch: source, rows,
    epoch_rows, share."""
    codes, uniq = _codes(sources, "source_counts")
    df = pd.DataFrame({"source": uniq, "rows": np.bincount(codes, minlength=len(uniq))})
    if index is not None:
        e = np.bincount(codes[np.asarray(index, dtype=np.int64)], minlength=len(uniq))
        df["epoch_rows"] = e
        df["share"] = e / max(1, e.sum())
    return df

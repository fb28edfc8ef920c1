"""Mean SAE codes over groups of tokens (sequences, cells or genes): the rows of cross-model feature
matching (:func:`saeflow.compare.matching.match_features`).

Two models tokenise the same sequence differently (single nucleotides, k-mers, BPE), so their
token rows do not correspond; their *sequences* (or, for cell models, their cells and genes) do.
Each group's row is the mean code over its tokens (zeros included), computed chunk by chunk from
the memory-mapped activation store; only the chosen groups' tokens are encoded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from saeflow.utils import SaeflowError


def group_mean_codes(
    store,
    sae,
    layer: int,
    group: np.ndarray,
    n_groups: int,
    *,
    rows: np.ndarray | None = None,
    chunk: int = 32768,
) -> np.ndarray:
    """(n_groups, d_sae) float32: the mean SAE code of each group's tokens. ``group``: the group id
    (0..n_groups-1, or -1: not used) of each token row of the store (or of ``rows`` when given)."""
    import torch

    n_tok = int(store.manifest["n_tokens"])
    rows = np.arange(n_tok) if rows is None else np.asarray(rows, dtype=np.int64)
    group = np.asarray(group, dtype=np.int64)
    if group.shape != rows.shape:
        raise SaeflowError(
            f"group_mean_codes: {group.shape[0]} group ids for {rows.shape[0]} token rows"
        )
    keep = group >= 0
    rows, group = rows[keep], group[keep]
    order = np.argsort(rows, kind="stable")
    rows, group = rows[order], group[order]
    d_sae = int(sae.W_dec.shape[0])
    sums = np.zeros((n_groups, d_sae), np.float64)
    counts = np.bincount(group, minlength=n_groups).astype(np.float64)
    pos = 0
    with torch.inference_mode():
        for r, block in store.iter_chunks(layer, rows, chunk=chunk):
            z = sae.encode(torch.from_numpy(block).to(sae.W_dec.dtype)).float().numpy()
            g = group[pos : pos + len(r)]
            _scatter_add(sums, g, z)
            pos += len(r)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


def _scatter_add(out: np.ndarray, g: np.ndarray, z: np.ndarray) -> None:
    """out[g[i]] += z[i] (sorted-group reduceat: much faster than np.add.at)."""
    o = np.argsort(g, kind="stable")
    gs = g[o]
    starts = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1]])
    out[gs[starts]] += np.add.reduceat(z[o].astype(np.float64), starts, axis=0)


def sequence_codes(store, sae, layer: int, seq_index: np.ndarray) -> np.ndarray:
    """(len(seq_index), d_sae): the mean code of each chosen sequence (or cell) over its tokens."""
    off = store.seq_offsets
    seq_index = np.asarray(seq_index, dtype=np.int64)
    if seq_index.size and (seq_index.min() < 0 or seq_index.max() >= len(off) - 1):
        raise SaeflowError(f"sequence_codes: sequence indices outside 0..{len(off) - 2}")
    rows = (
        np.concatenate([np.arange(off[s], off[s + 1]) for s in seq_index])
        if seq_index.size
        else np.zeros(0, int)
    )
    group = np.repeat(np.arange(len(seq_index)), off[seq_index + 1] - off[seq_index])
    return group_mean_codes(store, sae, layer, group, len(seq_index), rows=rows)


def gene_mean_codes(
    store, sae, layer: int, genes: pd.Index | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(codes (n_genes, d_sae), gene names): the mean code at each gene's tokens (cell models, whose
    token index has a ``gene`` column; tokens without a gene are left out); ``genes``: restrict to
    (and order by) these names, else every gene, sorted. The token genes are read by
    :func:`saeflow.cells.features.gene_codes`.
    """
    from saeflow.cells.features import gene_codes

    ids, names = gene_codes(store, allow_missing=True)
    if genes is not None:
        want = pd.Index(genes).astype(str)
        remap = np.append(want.get_indexer(names), -1)  # code -1 (no gene) stays -1
        ids, names = remap[ids], want.to_numpy()
    return group_mean_codes(store, sae, layer, ids, len(names)), np.asarray(names)

"""Single-cell feature analyses: what an SAE feature of a cell model (Geneformer, scGPT) responds
to.

Everything starts from one streaming pass over a cell-model activation store
(:func:`stream_cell_features`): each chunk of token rows is encoded by the SAE, its nonzero codes
are taken out as (row, feature, value) triplets, and only per-feature, per-(gene, feature) and
per-(cell, feature) accumulators are kept. A dense (tokens x latents) code matrix never exists
beyond one chunk. The result, :class:`CellFeatureStats`, holds

* per feature: tokens fired, sum and max of the activation;
* per (gene, feature): sum of the activation and number of firing tokens, sparse (G x F);
* per (cell, feature): sum, max and number of firing tokens, sparse (cells x F);
* optionally token-level co-occurrence counts of feature pairs (F x F) for the modules of
  :mod:`saeflow.sae.modules`.

From it, without touching the layer again:

* :func:`feature_table` (firing frequency per token and per cell, mean/max activation, alive);
* :func:`top_genes` (mean activation at a gene's token positions, zeros included);
* :func:`top_cells` (per-cell mean or max);
* :func:`celltype_enrichment` (Fisher's exact test of each feature's top cells against each label).

And from other inputs: :func:`svd_comparison` (top singular vectors of the activations vs the SAE),
:func:`annotation_by_alignment`, :func:`perturbation_response` (Mann-Whitney U per target and
feature),
:func:`regulatory_logic` (are a TF's responding features annotated to its TRRUST targets?) and
:func:`layer_summary` (the per-layer table).

Statistical decisions (and why) are documented on each function. Common to all:

* **Multiple testing.** Benjamini-Hochberg over the whole family a table reports (all features x
  labels, all targets x features, all TFs), never per feature: a reader scanning the table for
  q < 0.05 then gets the FDR the threshold promises. Untestable entries (a dead feature, a
  feature constant in both groups, a TF with no responding or no annotated feature) get p = q = NaN
  and are left out of the family rather than entered with p = 1.
* **Cells, not tokens, are the unit of replication** for every test about cells (enrichment,
  perturbation): tokens of one cell are not independent observations.

torch, scipy and igraph are imported inside the functions that need them, so :func:`layer_summary`
and the column constants import with numpy and pandas only (the report env has no torch).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from saeflow.decoder import decoder_rows
from saeflow.stats import bh, mann_whitney, rank_biserial, sample_rows
from saeflow.utils import SaeflowError, atomic_path, read_json, write_json

log = logging.getLogger(__name__)

#: Per-layer summary columns; one column per gene-set library goes between "Enrichments" and
# "Modules".
CELL_SUMMARY_COLUMNS = [
    "layer",
    "Features",
    "Alive",
    "Annotated",
    "Ann%",
    "Enrichments",
    "Modules",
    "Persistent",
    "Moderate",
    "Transient",
]


# --- small shared helpers ------------------------------------------------------------


def _sample_odds_ratio(a, b, c, d) -> np.ndarray:
    """(a d) / (b c), the sample odds ratio ``scipy.stats.fisher_exact`` reports (inf when b c = 0 <
    a d)."""
    num = np.asarray(a, np.float64) * d
    den = np.asarray(b, np.float64) * c
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.where(num > 0, np.inf, np.nan))


class _SparseAccumulator:
    """(row, col) -> reduced values for matrices too large to hold dense, fed in batches of
    triplets.

    ``ops`` gives the reduction of each value column ("sum" or "max"). A batch is reduced on its own
    (sort by key, ``reduceat``) and buffered; the buffer is merged into the sorted running arrays
    when it outgrows them (or 4 M entries), so the total cost is O(N log N) in the number of entries
    and memory is proportional to the distinct (row, col) pairs seen, i.e. sparse where the codes
    are."""

    def __init__(
        self,
        shape: tuple[int, int],
        ops: tuple[str, ...],
        dtype=np.float64,
        min_merge: int = 1 << 22,
    ):
        self.shape, self.ops, self.dtype, self.min_merge = shape, ops, dtype, min_merge
        self.keys = np.empty(0, np.int64)
        self.vals = np.empty((len(ops), 0), dtype)  # one contiguous row per value column
        self._buf: list[tuple[np.ndarray, np.ndarray]] = []
        self._nbuf = 0

    def _reduce(
        self, keys: np.ndarray, vals: np.ndarray, kind: str = "quicksort"
    ) -> tuple[np.ndarray, np.ndarray]:
        if len(keys) == 0:
            return keys, vals
        order = np.argsort(keys, kind=kind)
        k = keys[order]
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        out = np.empty((len(self.ops), len(starts)), self.dtype)
        for j, op in enumerate(self.ops):
            ufunc = np.add if op == "sum" else np.maximum
            out[j] = ufunc.reduceat(vals[j][order], starts)
        return k[starts], out

    def add(self, rows: np.ndarray, cols: np.ndarray, vals: list[np.ndarray]) -> None:
        """Add entries (rows[i], cols[i]) with value vals[j][i] in column j of ``ops``."""
        keys = rows.astype(np.int64) * self.shape[1] + cols
        k, v = self._reduce(keys, [np.asarray(x, self.dtype) for x in vals])
        self._buf.append((k, v))
        self._nbuf += len(k)
        if self._nbuf > max(self.min_merge, len(self.keys)):
            self._merge()

    def _merge(self) -> None:
        if not self._buf:
            return
        # every piece is already sorted: timsort ("stable") merges the runs in near-linear time
        self.keys, self.vals = self._reduce(
            np.concatenate([self.keys] + [b[0] for b in self._buf]),
            np.concatenate([self.vals] + [b[1] for b in self._buf], axis=1),
            "stable",
        )
        self._buf, self._nbuf = [], 0

    def csr(self, column: int, dtype=None):
        """One value column as a scipy CSR matrix of ``shape`` (absent pairs are 0)."""
        import scipy.sparse as sp

        self._merge()
        rows, cols = np.divmod(self.keys, self.shape[1])
        data = self.vals[column].astype(dtype or self.dtype)
        return sp.csr_matrix((data, (rows, cols)), shape=self.shape)


def _as_csr(x):
    import scipy.sparse as sp

    return x.tocsr() if sp.issparse(x) else sp.csr_matrix(np.asarray(x))


def _column_cutoffs(m, k: int, eligible_rows: np.ndarray | None = None) -> np.ndarray:
    """Per column of sparse ``m``, the k-th largest positive (eligible) value; 0 where there are
    fewer.

    One ``np.partition`` per column over that column's nonzeros only: O(nnz) in all, where sorting
    every entry would be O(nnz log nnz) (the gene x feature matrix can hold 10^8 entries).
    """
    csc = m.tocsc()
    csc.sum_duplicates()
    cut = np.zeros(csc.shape[1])
    ok = csc.data > 0
    if eligible_rows is not None:
        ok &= eligible_rows[csc.indices]
    cs = np.r_[0, np.cumsum(ok)]
    counts = cs[csc.indptr[1:]] - cs[csc.indptr[:-1]]
    for j in np.flatnonzero(counts >= k):
        s, e = csc.indptr[j], csc.indptr[j + 1]
        v = csc.data[s:e][ok[s:e]]
        cut[j] = np.partition(v, len(v) - k)[len(v) - k]
    return cut


def _top_per_column(m, n: int, eligible_rows: np.ndarray | None = None):
    """The ``n`` largest positive entries of each column of sparse ``m``: (rows, cols, values,
    rank).

    Entries below each column's n-th largest value are dropped first (:func:`_column_cutoffs`,
    linear time); the survivors are sorted by (column, value descending, row), so ties at the
    cut-off go to the smaller row index and the result is deterministic.
    """
    coo = m.tocoo()
    cut = _column_cutoffs(m, n, eligible_rows)
    keep = (coo.data > 0) & (coo.data >= cut[coo.col])
    if eligible_rows is not None:
        keep &= eligible_rows[coo.row]
    r, c, v = coo.row[keep], coo.col[keep], coo.data[keep]
    order = np.lexsort((r, -v, c))
    r, c, v = r[order], c[order], v[order]
    first = np.searchsorted(c, c, side="left")  # c is sorted: start of each column's run
    rank = np.arange(len(c)) - first
    sel = rank < n
    return r[sel], c[sel], v[sel], rank[sel]


# --- the streaming pass -----------------------------------------------------------------


@dataclass
class CellFeatureStats:
    """Per-feature, per-(gene, feature) and per-(cell, feature) accumulators of one SAE on one
    layer.

    Cell rows are the global cell ids of the store (rows of the cell table, ``seq`` in the token
    index); cells left out of the pass have ``cell_tokens == 0`` and empty rows. Gene rows follow
    ``genes`` (sorted gene ids of the token index).
    """

    layer: int
    n_features: int
    n_tokens: int  # tokens streamed
    fire_count: np.ndarray  # (F,) tokens where the feature is nonzero
    act_sum: np.ndarray  # (F,) sum of activations
    act_max: np.ndarray  # (F,)
    genes: np.ndarray  # (G,) gene ids (str)
    gene_tokens: np.ndarray  # (G,) tokens of each gene streamed
    gene_sum: object  # csr (G, F) float64: sum of activations at the gene's tokens
    gene_fires: object  # csr (G, F) int64: tokens of the gene where the feature fires
    cell_tokens: np.ndarray  # (n_cells,) tokens of each cell streamed
    cell_sum: object  # csr (n_cells, F) float32
    cell_max: object  # csr (n_cells, F) float32
    cell_fires: object  # csr (n_cells, F) int32: tokens of the cell where the feature fires
    cooc: np.ndarray | None = (
        None  # (F, F) int64 token-level co-occurrence counts (diagonal = fire counts)
    )
    cooc_units: int = 0  # tokens the co-occurrence counts were taken over
    meta: dict = field(default_factory=dict)
    act_hist: np.ndarray | None = None  # (F, saeflow.histogram.N_BINS) activation histogram counts

    @property
    def n_cells(self) -> int:
        return len(self.cell_tokens)

    @property
    def cells_used(self) -> np.ndarray:
        """Boolean mask of the cells streamed (with at least one token)."""
        return self.cell_tokens > 0

    def cell_mean(self):
        """csr (n_cells, F) float32: mean activation over each cell's tokens (zeros included)."""
        import scipy.sparse as sp

        inv = np.divide(
            1.0, self.cell_tokens, out=np.zeros(self.n_cells), where=self.cell_tokens > 0
        )
        return (sp.diags(inv.astype(np.float32)) @ self.cell_sum).tocsr()

    # -- persistence: one directory of npz/json files ----------------------------------
    _ARRAYS = ("fire_count", "act_sum", "act_max", "gene_tokens", "cell_tokens")
    _SPARSE = ("gene_sum", "gene_fires", "cell_sum", "cell_max", "cell_fires")

    def save(self, directory: str | os.PathLike) -> None:
        import scipy.sparse as sp

        with atomic_path(directory) as tmp:
            tmp.mkdir()
            np.savez(
                tmp / "arrays.npz",
                **{k: getattr(self, k) for k in self._ARRAYS},
                **({"cooc": self.cooc} if self.cooc is not None else {}),
            )
            for k in self._SPARSE:
                sp.save_npz(tmp / f"{k}.npz", getattr(self, k))
            pd.DataFrame({"gene": self.genes.astype(str)}).to_parquet(
                tmp / "genes.parquet", index=False
            )
            write_json(
                tmp / "stats.json",
                dict(
                    layer=self.layer,
                    n_features=self.n_features,
                    n_tokens=self.n_tokens,
                    cooc_units=self.cooc_units,
                    meta=self.meta,
                ),
            )

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "CellFeatureStats":
        import scipy.sparse as sp

        d = Path(directory)
        if not (d / "stats.json").exists():
            raise SaeflowError(
                f"{d}: no stats.json; not a directory written by CellFeatureStats.save"
            )
        info = read_json(d / "stats.json")
        with np.load(d / "arrays.npz") as z:
            arrays = {k: z[k] for k in cls._ARRAYS}
            cooc = z["cooc"] if "cooc" in z.files else None
        sparse = {k: sp.load_npz(d / f"{k}.npz").tocsr() for k in cls._SPARSE}
        genes = pd.read_parquet(d / "genes.parquet").gene.to_numpy().astype(str)
        return cls(
            layer=info["layer"],
            n_features=info["n_features"],
            n_tokens=info["n_tokens"],
            genes=genes,
            cooc=cooc,
            cooc_units=info["cooc_units"],
            meta=info.get("meta", {}),
            **arrays,
            **sparse,
        )


def gene_codes(store, *, allow_missing: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(codes per token row (int32), sorted gene ids): the token index's ``gene`` column, encoded.

    The one reader of a cell model's token genes. Read as a pyarrow dictionary column, so memory is
    4 bytes per token, not one Python string each. A token without a gene (null, or the empty
    string when ``allow_missing``) is an error unless ``allow_missing``, which gives it code -1.
    """
    import pyarrow.parquet as pq

    path = Path(store.dir) / "tokens.parquet"
    if not path.exists():
        raise SaeflowError(f"{path}: no such file (the token index of the activation store)")
    schema = pq.read_schema(path)
    if "gene" not in schema.names:
        raise SaeflowError(
            f"{path}: no column 'gene' (it has: {', '.join(schema.names)}); "
            "not the activation store of a cell model"
        )
    if pa_is_string(schema.field("gene").type):
        col = (
            pq.read_table(path, columns=["gene"], read_dictionary=["gene"])
            .column("gene")
            .to_pandas()
        )
    else:  # numeric gene ids: categorise their string form
        col = pq.read_table(path, columns=["gene"]).column("gene").to_pandas().astype(str)
    cat = col.array if isinstance(col.dtype, pd.CategoricalDtype) else pd.Categorical(col)
    codes = np.asarray(cat.codes, dtype=np.int32)
    if allow_missing:
        empty = np.flatnonzero(np.asarray(cat.categories, dtype=object).astype(str) == "")
        if len(empty):
            codes[np.isin(codes, empty)] = -1
    elif (codes < 0).any():
        raise SaeflowError(
            f"{path}: column 'gene' has missing values (rows "
            f"{np.flatnonzero(codes < 0)[:5].tolist()}...)"
        )
    genes = np.asarray(cat.categories, dtype=object).astype(str)
    if len(codes) != int(store.manifest["n_tokens"]):
        raise SaeflowError(
            f"{path}: {len(codes)} rows but the manifest says {store.manifest['n_tokens']} tokens"
        )
    # Sorted gene ids, whatever order the dictionary came in.
    order = np.argsort(genes, kind="stable")
    keep = order[genes[order] != ""] if allow_missing else order
    remap = np.full(len(genes) + 1, -1, np.int32)  # the last entry maps code -1 to -1
    remap[keep] = np.arange(len(keep), dtype=np.int32)
    return remap[codes], genes[keep]


def pa_is_string(t) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)


def _cell_blocks(arr, offsets: np.ndarray, cells: np.ndarray, chunk: int, path: str):
    """Yield (first row, float32 block, cell id per row) over the rows of ``cells`` (sorted), <=
    chunk rows each."""
    starts, ends = offsets[cells], offsets[cells + 1]
    nonempty = ends > starts
    starts, ends = starts[nonempty], ends[nonempty]
    if len(starts) == 0:
        return
    brk = np.flatnonzero(starts[1:] != ends[:-1]) + 1  # contiguous runs of selected cells
    run_starts = starts[np.r_[0, brk]]
    run_ends = ends[np.r_[brk - 1, len(ends) - 1]]
    for a0, b0 in zip(run_starts, run_ends):
        for a in range(int(a0), int(b0), chunk):
            b = min(int(b0), a + chunk)
            x = np.asarray(arr[a:b], dtype=np.float32)
            if not np.isfinite(x).all():
                raise SaeflowError(f"{path}: NaN or inf in rows {a}..{b - 1}")
            rows = np.arange(a, b)
            yield a, x, np.searchsorted(offsets, rows, side="right") - 1


def _sparse_codes(
    sae, x: np.ndarray, device
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row, feature, value) of the nonzero codes of one block, and each feature's max over the
    block.

    The dense (block x d_sae) codes exist only inside this function.
    """
    import torch

    with torch.no_grad():
        z = sae.encode(torch.from_numpy(x).to(device))
    if isinstance(z, torch.Tensor):
        r, f = torch.nonzero(z, as_tuple=True)
        v = z[r, f].float().cpu().numpy()
        return r.cpu().numpy(), f.cpu().numpy(), v, z.amax(dim=0).clamp_min(0).float().cpu().numpy()
    z = np.asarray(z)
    r, f = np.nonzero(z)
    return r, f, z[r, f].astype(np.float32), z.max(axis=0).clip(min=0)


def _sae_device(sae):
    import torch

    try:
        return next(sae.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _add_cooc(cooc: np.ndarray, buf: list, n_rows: int, F: int) -> int:
    """cooc += B^T B for the buffered (row, feature) pairs; empties ``buf``; returns 0 (the new row
    count)."""
    import scipy.sparse as sp

    if buf:
        r = np.concatenate([b[0] for b in buf])
        f = np.concatenate([b[1] for b in buf])
        b = sp.csr_matrix((np.ones(len(r), np.int32), (r, f)), shape=(n_rows, F))
        p = (b.T @ b).tocoo()
        cooc[p.row, p.col] += p.data
        buf.clear()
    return 0


def stream_cell_features(
    sae,
    store,
    layer: int,
    *,
    cells: np.ndarray | None = None,
    chunk: int = 4096,
    cooccurrence: bool = False,
    cooccurrence_max_tokens: int | None = None,
    seed: int = 0,
) -> CellFeatureStats:
    """One pass over a cell-model layer: every accumulator of :class:`CellFeatureStats`.

    ``cells``: boolean mask over the store's cells (rows of the cell table) or sorted cell ids;
    ``None`` = all cells. Rows are read ``chunk`` at a time and encoded; the codes of a chunk are
    turned into sparse triplets at once, so RAM holds one dense (chunk x d_sae) block plus
    accumulators proportional to the distinct (gene, feature) and (cell, feature) pairs that fire.

    ``cooccurrence``: also count, over tokens, how often each pair of features fires on the same
    token (a dense (d_sae x d_sae) int64 matrix; 170 MB at 4608 latents). Its cost grows with tokens
    x L0^2, so ``cooccurrence_max_tokens`` restricts it to a seeded random subset of whole cells
    holding at most that many tokens (``None`` = all streamed tokens). Co-occurrence *within cells*
    needs no pass of its own: :func:`saeflow.sae.modules.cooccurrence` of ``stats.cell_fires >= m``
    (features firing on at least m tokens of the same cell).

    Memory: the (cell, feature) accumulator costs 20 bytes per distinct pair that fires (twice that
    while merging), the (gene, feature) one 24; the chunk's dense codes 4 x chunk x d_sae bytes.
    """
    from saeflow import histogram

    arr = store.layer(layer)
    path = f"{store.dir}/layer{layer}.npy"
    w_dec = decoder_rows(sae)
    F, d_in = w_dec.shape
    if arr.shape[1] != d_in:
        raise SaeflowError(f"{path}: width {arr.shape[1]} but the SAE expects d_in={d_in}")
    offsets = np.asarray(store.seq_offsets, dtype=np.int64)
    n_cells = len(offsets) - 1
    if cells is None:
        cell_ids = np.arange(n_cells)
    else:
        cells = np.asarray(cells)
        if cells.dtype == bool:
            if len(cells) != n_cells:
                raise SaeflowError(
                    f"{store.dir}: cell mask has {len(cells)} entries but the store has {n_cells} "
                    "cells"
                )
            cell_ids = np.flatnonzero(cells)
        else:
            cell_ids = np.unique(cells.astype(np.int64))
            if len(cell_ids) and (cell_ids[0] < 0 or cell_ids[-1] >= n_cells):
                raise SaeflowError(f"{store.dir}: cell ids out of range 0..{n_cells - 1}")
    codes, genes = gene_codes(store)
    G = len(genes)
    cell_len = offsets[1:] - offsets[:-1]
    selected = np.zeros(n_cells, bool)
    selected[cell_ids] = True
    # token counts per cell and per gene come from the index alone, not from the pass
    cell_tokens = np.where(selected, cell_len, 0).astype(np.int64)
    gene_tokens = np.bincount(
        codes if selected.all() else codes[np.repeat(selected, cell_len)], minlength=G
    ).astype(np.int64)
    cooc_cell = None
    if cooccurrence:
        cooc_cell = np.zeros(n_cells, bool)
        if cooccurrence_max_tokens is None or cell_len[cell_ids].sum() <= cooccurrence_max_tokens:
            cooc_cell[cell_ids] = True
        else:
            perm = np.random.default_rng(seed).permutation(cell_ids)
            take = perm[np.cumsum(cell_len[perm]) <= cooccurrence_max_tokens]
            cooc_cell[take] = True
        cooc = np.zeros((F, F), np.int64)
        cooc_units, cooc_rows, cooc_buf = 0, 0, []
    device = _sae_device(sae)
    fire_count = np.zeros(F, np.int64)
    act_hist = histogram.empty(F)
    act_sum = np.zeros(F, np.float64)
    act_max = np.zeros(F, np.float64)
    gene_acc = _SparseAccumulator((G, F), ("sum", "sum"), np.float64)
    cell_acc = _SparseAccumulator((n_cells, F), ("sum", "max", "sum"), np.float32)
    n_tokens = 0
    for a, x, cell_of in _cell_blocks(arr, offsets, cell_ids, chunk, path):
        n = len(x)
        if cooc_cell is not None:
            cooc_units += int(cooc_cell[cell_of].sum())
        g = codes[a : a + n]
        n_tokens += n
        r, f, v, vmax = _sparse_codes(sae, x, device)
        np.maximum(act_max, vmax, out=act_max)
        if len(v) == 0:
            continue
        fire_count += np.bincount(f, minlength=F)
        act_sum += np.bincount(f, weights=v, minlength=F)
        histogram.accumulate(act_hist, f, v)
        one = np.ones(len(v), np.float32)
        gene_acc.add(g[r], f, [v, one])
        cell_acc.add(cell_of[r], f, [v, v, one])
        if cooc_cell is not None:
            sel = cooc_cell[cell_of][r]
            if sel.any():  # buffered: one (units x F) product per ~64k tokens, not per chunk
                cooc_buf.append((r[sel] + cooc_rows, f[sel]))
                cooc_rows += n
                if cooc_rows >= 65536:
                    cooc_rows = _add_cooc(cooc, cooc_buf, cooc_rows, F)
    if cooc_cell is not None:
        _add_cooc(cooc, cooc_buf, cooc_rows, F)
    log.info(
        "layer %d: streamed %d tokens of %d cells, %d features",
        layer,
        n_tokens,
        int((cell_tokens > 0).sum()),
        F,
    )
    return CellFeatureStats(
        layer=int(layer),
        n_features=F,
        n_tokens=n_tokens,
        fire_count=fire_count,
        act_sum=act_sum,
        act_max=act_max,
        genes=genes,
        gene_tokens=gene_tokens,
        gene_sum=gene_acc.csr(0),
        gene_fires=gene_acc.csr(1, np.int64),
        cell_tokens=cell_tokens,
        cell_sum=cell_acc.csr(0),
        cell_max=cell_acc.csr(1),
        cell_fires=cell_acc.csr(2, np.int32),
        cooc=cooc if cooc_cell is not None else None,
        cooc_units=cooc_units if cooc_cell is not None else 0,
        meta={"store": str(store.dir), "chunk": chunk},
        act_hist=act_hist,
    )


# --- tables from the accumulators ------------------------------------------------------------


def feature_table(stats: CellFeatureStats) -> pd.DataFrame:
    """One row per feature: ``frequency`` (fraction of streamed tokens where it fires),
    ``cell_frequency``
    (fraction of streamed cells where it fires on at least one token), ``mean_activation`` (over the
    tokens where it fires, as in the DNA catalog), ``max_activation``, ``alive`` (fires at all)."""
    n_cells = max(int(stats.cells_used.sum()), 1)
    fc = stats.fire_count
    return pd.DataFrame(
        {
            "feature": np.arange(stats.n_features),
            "frequency": fc / max(stats.n_tokens, 1),
            "cell_frequency": stats.cell_fires.getnnz(axis=0) / n_cells,
            "mean_activation": stats.act_sum / np.maximum(fc, 1),
            "max_activation": stats.act_max,
            "alive": fc > 0,
        }
    )


def top_genes(stats: CellFeatureStats, *, top_n: int = 20, min_count: int = 10) -> pd.DataFrame:
    """Per feature, the ``top_n`` genes with the highest mean activation at their token positions.

    The mean of gene g for feature f is (sum of f's activation over every token of g) / (number of
    tokens of g): tokens where f is silent count as zeros, so a gene ranks high only if f fires on
    it
    *consistently*, not because of one extreme token. Genes seen on fewer than ``min_count`` tokens
    are skipped (their means are too noisy to rank); genes with mean 0 are never listed.

    Columns: feature, rank (0 = best), gene, mean_activation, count (tokens of the gene),
    fire_fraction (fraction of those tokens where the feature fires).
    """
    eligible = stats.gene_tokens >= min_count
    inv = np.divide(
        1.0, stats.gene_tokens, out=np.zeros(len(stats.gene_tokens)), where=stats.gene_tokens > 0
    )
    import scipy.sparse as sp

    means = (sp.diags(inv) @ stats.gene_sum).tocsc()
    g, f, v, rank = _top_per_column(means, top_n, eligible)
    fires = np.asarray(stats.gene_fires[g, f]).ravel() if len(g) else np.zeros(0)
    out = pd.DataFrame(
        {
            "feature": f.astype(np.int64),
            "rank": rank.astype(np.int64),
            "gene": stats.genes[g],
            "mean_activation": v,
            "count": stats.gene_tokens[g],
            "fire_fraction": fires / np.maximum(stats.gene_tokens[g], 1),
        }
    )
    return out.sort_values(["feature", "rank"], kind="stable").reset_index(drop=True)


def top_cells(
    stats: CellFeatureStats, *, top_n: int = 20, by: str = "mean", names=None, labels=None
) -> pd.DataFrame:
    """Per feature, the ``top_n`` cells with the largest per-cell ``mean`` (over all the cell's
    tokens) or ``max`` activation. Columns: feature, rank, cell (row of the cell table), activation,
    and ``name`` / ``label`` when given (arrays over all cells of the table)."""
    if by not in ("mean", "max"):
        raise SaeflowError(f"top_cells: by must be 'mean' or 'max' (got {by!r})")
    m = stats.cell_mean() if by == "mean" else stats.cell_max
    c, f, v, rank = _top_per_column(m.tocsc(), top_n)
    out = pd.DataFrame(
        {
            "feature": f.astype(np.int64),
            "rank": rank.astype(np.int64),
            "cell": c.astype(np.int64),
            "activation": v.astype(np.float64),
        }
    )
    for col, arr in (("name", names), ("label", labels)):
        if arr is not None:
            arr = np.asarray(arr)
            if len(arr) != stats.n_cells:
                raise SaeflowError(
                    f"top_cells: {col} has {len(arr)} entries but the store has {stats.n_cells} "
                    "cells"
                )
            out[col] = arr[out.cell.to_numpy()]
    return out.sort_values(["feature", "rank"], kind="stable").reset_index(drop=True)


def top_cell_sets(cell_values, top_fraction: float, universe: np.ndarray | None = None):
    """Boolean sparse (cells x F): each feature's top cells, the top ``top_fraction`` of the
    universe.

    With N cells in the universe, k = ceil(top_fraction * N); the top set of feature f is every cell
    whose value is >= the k-th largest value of f and > 0 (a cell where f never fires is never a
    "top" cell, so a rare feature can have fewer than k top cells). Ties at the cut-off are all
    included: membership then depends only on the values, never on the order of the cells.
    """
    import scipy.sparse as sp

    m = _as_csr(cell_values)
    n_cells = m.shape[0]
    if not 0 < top_fraction <= 1:
        raise SaeflowError(f"top_fraction must be in (0, 1] (got {top_fraction})")
    if universe is None:
        universe = np.ones(n_cells, bool)
    universe = np.asarray(universe, bool)
    k = max(1, int(np.ceil(top_fraction * universe.sum())))
    # 0 where a feature fires in fewer than k cells: all of them are top
    cut = _column_cutoffs(m, k, universe)
    coo = m.tocoo()
    sel = (coo.data > 0) & universe[coo.row] & (coo.data >= cut[coo.col])
    return sp.csr_matrix(
        (np.ones(int(sel.sum()), bool), (coo.row[sel], coo.col[sel])), shape=m.shape
    )


def celltype_enrichment(
    cell_values,
    labels,
    *,
    top_fraction: float = 0.05,
    universe: np.ndarray | None = None,
    missing: tuple = ("", "nan", "None"),
) -> pd.DataFrame:
    """Fisher's exact test (one-sided, greater) of each feature's top cells against each cell label.

    ``cell_values``: (cells x F) per-cell activations, normally :meth:`CellFeatureStats.cell_mean`;
    ``labels``: one label per cell. The universe is the cells of ``universe`` (default: all) whose
    label is not missing (``missing``): unlabelled cells can be neither in nor out of a label. When
    only some cells were streamed, pass ``universe=stats.cells_used``: the others have all-zero rows
    and would count as "not top" cells.

    For feature f and label l the 2 x 2 table is top/not top (see :func:`top_cell_sets`, fraction
    ``top_fraction``) x label l/other labels: a = top cells with l, b = top cells without l,
    c = other cells with l, d = the rest. The one-sided p-value P(X >= a), X ~ Hypergeom(N, n_l, K)
    (N cells, n_l of label l, K top cells) is exactly ``scipy.stats.fisher_exact(table,
    alternative="greater")``; it is computed for every (feature, label) pair at once with the
    hypergeometric upper tail. ``odds_ratio`` is the sample odds ratio a d / (b c) that fisher_exact
    reports. One-sided because a feature "marking" a cell type is over-representation; depletion is
    not a claim the atlas makes.

    q: BH over all tested (feature, label) pairs, the whole family; features with no top cell (dead)
    are not tested (p = q = NaN). Columns: feature, label, n_top, n_label, overlap, expected,
    odds_ratio, p, q.
    """
    import scipy.sparse as sp
    from scipy.stats import hypergeom

    m = _as_csr(cell_values)
    labels = np.asarray(labels).astype(str)
    if len(labels) != m.shape[0]:
        raise SaeflowError(f"celltype_enrichment: {len(labels)} labels for {m.shape[0]} cells")
    ok = ~np.isin(labels, list(missing))
    if universe is not None:
        ok &= np.asarray(universe, bool)
    names, lab = np.unique(labels[ok], return_inverse=True)
    if len(names) == 0:
        raise SaeflowError(
            "celltype_enrichment: no cell has a label (is the dataset's label_column set?)"
        )
    top = top_cell_sets(m, top_fraction, ok)
    onehot = sp.csr_matrix(
        (np.ones(len(lab)), (np.flatnonzero(ok), lab)), shape=(m.shape[0], len(names))
    )
    a = np.asarray((top.T.astype(np.float64) @ onehot).todense())  # (F, L) overlaps
    K = np.asarray(top.sum(axis=0)).ravel()[:, None]  # (F, 1)
    n_l = np.bincount(lab, minlength=len(names))[None, :].astype(np.float64)  # (1, L)
    N = float(ok.sum())
    p = hypergeom.sf(a - 1, N, n_l, K)
    p = np.where(K > 0, np.clip(p, 0.0, 1.0), np.nan)
    q = bh(p)
    F, L = a.shape
    b, c = K - a, n_l - a
    d = N - K - n_l + a
    return pd.DataFrame(
        {
            "feature": np.repeat(np.arange(F), L),
            "label": np.tile(names, F),
            "n_top": np.repeat(K.ravel(), L).astype(np.int64),
            "n_label": np.tile(n_l.ravel(), F).astype(np.int64),
            "overlap": a.ravel().astype(np.int64),
            "expected": (K * n_l / N).ravel(),
            "odds_ratio": _sample_odds_ratio(a, b, c, d).ravel(),
            "p": p.ravel(),
            "q": q.ravel(),
        }
    )


# --- SVD vs SAE ---------------------------------------------------------------------------


def sample_activations(
    store, layer: int, n: int, seed: int = 0, rows: np.ndarray | None = None
) -> np.ndarray:
    """float32 (min(n, N), d): a seeded sample (:func:`saeflow.stats.sample_rows`) of the token rows
    (or of ``rows``), sorted, read row by row from the map."""
    arr = store.layer(layer)
    pool = np.arange(arr.shape[0]) if rows is None else np.asarray(rows)
    take = np.sort(pool[sample_rows(len(pool), n, seed)])
    x = np.asarray(arr[take], dtype=np.float32)
    if not np.isfinite(x).all():
        raise SaeflowError(f"{store.dir}/layer{layer}.npy: NaN or inf among the sampled rows")
    return x


def svd_comparison(
    sae,
    x: np.ndarray,
    *,
    n_components: int = 50,
    threshold: float = 0.5,
    alive: np.ndarray | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Top right singular vectors of the (centred) sample ``x`` vs the SAE on the same rows.

    * ``svd_var_explained``: fraction of the sample's total variance (sum of squared deviations from
      the mean) in the top ``n_components`` singular directions, sum(s_k^2, k < n) / sum(s^2) -- the
      best any rank-n linear code can do;
    * ``sae_var_explained``: 1 - sum ||x - x_hat||^2 / sum ||x - mean||^2 of the SAE on the same
    rows;
    * per feature ``svd_max_cos``: max |cos| between its decoder row and those singular vectors
      (absolute: a singular vector's sign is arbitrary); ``svd_aligned`` = alive and max |cos| >
      ``threshold``, ``novel`` = alive and not aligned.

    ``x``: a sample of rows (:func:`sample_activations`), small enough for an exact SVD (n x d).
    """
    import torch

    x = np.asarray(x, dtype=np.float32)
    mu = x.mean(0, dtype=np.float64)
    xc = (x - mu).astype(np.float64)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = min(n_components, len(s))
    total = float((s**2).sum())
    device = _sae_device(sae)
    with torch.no_grad():
        xt = torch.from_numpy(x).to(device)
        xh = sae.decode(sae.encode(xt))
    xh = xh.float().cpu().numpy() if isinstance(xh, torch.Tensor) else np.asarray(xh, np.float32)
    sse = float(((x.astype(np.float64) - xh) ** 2).sum())
    w = decoder_rows(sae).astype(np.float64)
    w /= np.linalg.norm(w, axis=1, keepdims=True).clip(1e-12)
    maxcos = np.abs(w @ vt[:k].T).max(axis=1) if k else np.zeros(len(w))
    alive = np.ones(len(w), bool) if alive is None else np.asarray(alive, bool)
    aligned = alive & (maxcos > threshold)
    feats = pd.DataFrame(
        {
            "feature": np.arange(len(w)),
            "svd_max_cos": maxcos,
            "svd_aligned": aligned,
            "novel": alive & ~aligned,
        }
    )
    summary = {
        "n_sample": int(len(x)),
        "n_components": int(k),
        "svd_var_explained": float((s[:k] ** 2).sum() / total) if total > 0 else float("nan"),
        "sae_var_explained": 1.0 - sse / total if total > 0 else float("nan"),
        "alive": int(alive.sum()),
        "svd_aligned": int(aligned.sum()),
        "novel": int((alive & ~aligned).sum()),
        "threshold": float(threshold),
    }
    return feats, summary


def annotation_by_alignment(aligned, annotated, alive=None) -> dict:
    """Annotation rate of SVD-aligned vs novel (alive, not aligned) features, and whether they
    differ.

    Returns counts and rates per group plus the sample odds ratio (aligned vs novel) and the
    two-sided Fisher exact p-value of the 2 x 2 table group x annotated (NaN when a group is empty).
    """
    from scipy.stats import fisher_exact

    aligned = np.asarray(aligned, bool)
    annotated = np.asarray(annotated, bool)
    if aligned.shape != annotated.shape:
        raise SaeflowError(
            f"annotation_by_alignment: {len(aligned)} aligned flags but {len(annotated)} "
            "annotated flags"
        )
    alive = np.ones_like(aligned) if alive is None else np.asarray(alive, bool)
    al, nv = alive & aligned, alive & ~aligned
    a, b = int((al & annotated).sum()), int((al & ~annotated).sum())
    c, d = int((nv & annotated).sum()), int((nv & ~annotated).sum())
    p = fisher_exact([[a, b], [c, d]])[1] if (a + b) and (c + d) else float("nan")
    return {
        "aligned": a + b,
        "aligned_annotated": a,
        "aligned_rate": a / (a + b) if a + b else float("nan"),
        "novel": c + d,
        "novel_annotated": c,
        "novel_rate": c / (c + d) if c + d else float("nan"),
        "odds_ratio": float(_sample_odds_ratio(a, b, c, d)),
        "p": float(p),
    }


# --- perturbation response (Perturb-seq, e.g. Replogle) ----------------------------------------


def _dense_rows(m, rows: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
    import scipy.sparse as sp

    sub = m[rows]
    if cols is not None:
        sub = sub[:, cols]
    return np.asarray(sub.toarray() if sp.issparse(sub) else sub, dtype=np.float64)


def perturbation_response(
    cell_acts,
    perturbation,
    control: str,
    *,
    targets=None,
    min_cells: int = 10,
    max_control_cells: int | None = None,
    features: np.ndarray | None = None,
    seed: int = 0,
    z: float = 1.959963984540054,
) -> pd.DataFrame:
    """Features whose per-cell activation shifts in the cells of each CRISPRi target vs control
    cells.

    ``cell_acts``: (cells x F) per-cell activations (mean over each cell's tokens, e.g.
    :meth:`CellFeatureStats.cell_mean`), dense or sparse; ``perturbation``: the target of each cell
    (``control`` for non-targeting cells). Targets with fewer than ``min_cells`` cells are skipped;
    cells whose label is neither ``control`` nor a tested target are ignored (give cells that were
    not streamed the label "" so their all-zero rows stay out).

    Test: two-sided Mann-Whitney U of perturbed vs control cells, per feature
    (:func:`saeflow.stats.mann_whitney`: all features of a target in one call, scipy's ``"auto"``
    method chosen per feature -- exact for tiny tie-free samples, otherwise the normal approximation
    with tie and continuity correction -- per-cell activations have many exact zeros, hence ties).
    Rank-based because per-cell means are zero-inflated and heavy-tailed; the cell is the unit
    (tokens of a cell are not independent). A feature constant over both groups (e.g. never fires)
    is not tested.

    Effect sizes: ``rank_biserial`` = 2 U / (n_t n_c) - 1 (the probability that a perturbed cell
    exceeds a control cell minus the reverse; > 0 = up in perturbed cells) and ``diff`` = difference
    of means with a Welch normal-approximation CI (``ci_low``, ``ci_high``; ``z`` sets the level).

    q: BH over all tested (target, feature) pairs of the call. ``max_control_cells``: seeded
    subsample of the controls (the cost of each target is a rank of n_t + n_c values per feature).
    ``features``: restrict to these feature indices (e.g. the alive ones).

    Columns: target, feature, n_cells, n_control, mean_perturbed, mean_control, diff, ci_low,
    ci_high, U, rank_biserial, p, q."""
    m = _as_csr(cell_acts)
    pert = np.asarray(perturbation).astype(str)
    if len(pert) != m.shape[0]:
        raise SaeflowError(
            f"perturbation_response: {len(pert)} perturbation labels for {m.shape[0]} cells"
        )
    ctrl_rows = np.flatnonzero(pert == control)
    if len(ctrl_rows) < 2:
        raise SaeflowError(
            f"perturbation_response: {len(ctrl_rows)} control cells labelled {control!r}; need >= 2"
        )
    if max_control_cells and len(ctrl_rows) > max_control_cells:
        ctrl_rows = np.sort(
            np.random.default_rng(seed).choice(ctrl_rows, max_control_cells, replace=False)
        )
    feats = np.arange(m.shape[1]) if features is None else np.asarray(features, dtype=np.int64)
    y = _dense_rows(m, ctrl_rows, feats)
    if targets is None:
        names, counts = np.unique(pert[pert != control], return_counts=True)
        targets = names[counts >= min_cells]
    frames = []
    for t in targets:
        rows = np.flatnonzero(pert == t)
        if len(rows) < min_cells:
            log.info(
                "perturbation_response: target %s has %d cells (< %d); skipped",
                t,
                len(rows),
                min_cells,
            )
            continue
        x = _dense_rows(m, rows, feats)
        nt, nc = len(x), len(y)
        U, p = mann_whitney(x, y)
        mx, my = x.mean(0), y.mean(0)
        se = (
            np.sqrt(x.var(0, ddof=1) / nt + y.var(0, ddof=1) / nc)
            if nt > 1
            else np.full(len(feats), np.nan)
        )
        diff = mx - my
        frames.append(
            pd.DataFrame(
                {
                    "target": t,
                    "feature": feats,
                    "n_cells": nt,
                    "n_control": nc,
                    "mean_perturbed": mx,
                    "mean_control": my,
                    "diff": diff,
                    "ci_low": diff - z * se,
                    "ci_high": diff + z * se,
                    "U": U,
                    "rank_biserial": rank_biserial(U, nt, nc),
                    "p": p,
                }
            )
        )
    cols = [
        "target",
        "feature",
        "n_cells",
        "n_control",
        "mean_perturbed",
        "mean_control",
        "diff",
        "ci_low",
        "ci_high",
        "U",
        "rank_biserial",
        "p",
        "q",
    ]
    if not frames:
        return pd.DataFrame(columns=cols)
    out = pd.concat(frames, ignore_index=True)
    out["q"] = bh(out.p.to_numpy())
    return out[cols]


def _gene_sets(obj, key: str, value: str, what: str) -> dict:
    """{key: set(values)} from a mapping or a long DataFrame with columns ``key`` and ``value``."""
    if isinstance(obj, pd.DataFrame):
        missing = [c for c in (key, value) if c not in obj.columns]
        if missing:
            raise SaeflowError(
                f"{what}: no column {missing[0]!r} (it has: {', '.join(map(str, obj.columns))})"
            )
        return {k: set(map(str, v)) for k, v in obj.groupby(key)[value]}
    return {k: set(map(str, v)) for k, v in dict(obj).items()}


#: columns of :func:`regulatory_logic`'s table, in order
REGULATORY_COLUMNS = [
    "tf",
    "n_features",
    "n_responding",
    "n_annotated",
    "overlap",
    "expected",
    "fold",
    "p",
    "p_exact",
    "q",
]


def regulatory_logic(
    response: pd.DataFrame,
    feature_genes,
    tf_targets,
    *,
    alpha: float = 0.05,
    min_shared_genes: int = 1,
    n_perm: int = 10000,
    seed: int = 0,
    tfs=None,
) -> pd.DataFrame:
    """For each perturbed TF with TRRUST targets: are its responding features annotated to its
    targets?

    Inputs: ``response`` (:func:`perturbation_response`: target, feature, q); ``feature_genes``:
    each feature's top genes, a DataFrame with columns feature, gene (:func:`top_genes`) or a
    mapping feature -> genes; ``tf_targets``: TRRUST, a DataFrame with columns tf, target or a
    mapping tf -> target genes. Gene identifiers must be in one space (e.g. symbols) across all
    three.

    For TF t (a perturbation target of ``response`` that has TRRUST targets):

    * universe U: the features tested for t (rows of ``response`` with a finite p);
    * responding R: features of U with q < ``alpha``;
    * annotated A: features of U with at least ``min_shared_genes`` of t's TRRUST targets among
      their top genes;
    * statistic: the overlap |R n A|, reported with its expectation |R||A|/|U| and fold enrichment.

    Null: R is a random feature set of the same size drawn from U (equivalently, the annotation
    labels permuted over U). Its overlap with A is then hypergeometric, so each of the ``n_perm``
    draws (seeded) samples that overlap count directly (``Generator.hypergeometric``) instead of
    materialising feature sets; ``p`` = (1 + #draws >= observed) / (1 + n_perm), the +1 making it a
    valid p-value. ``p_exact`` is the hypergeometric upper tail the draws approximate. TFs with
    |R| = 0 or |A| = 0 are reported but not tested (p = q = NaN); q: BH over the tested TFs.

    Columns: tf, n_features, n_responding, n_annotated, overlap, expected, fold, p, p_exact, q.
    """
    from scipy.stats import hypergeom

    for c in ("target", "feature", "p", "q"):
        if c not in response.columns:
            raise SaeflowError(
                f"regulatory_logic: response table has no column {c!r} (it has: "
                f"{', '.join(response.columns)})"
            )
    fg = _gene_sets(feature_genes, "feature", "gene", "regulatory_logic feature_genes")
    try:
        fg = {int(k): v for k, v in fg.items()}
    except (TypeError, ValueError):
        raise SaeflowError(
            "regulatory_logic: feature_genes must be keyed by integer feature ids"
        ) from None
    tt = _gene_sets(tf_targets, "tf", "target", "regulatory_logic tf_targets")
    rng = np.random.default_rng(seed)
    tested = response[np.isfinite(response.p.to_numpy(dtype=float))]
    tested = tested.assign(target=tested.target.astype(str))
    perturbed = set(response.target.astype(str).unique())
    cand = sorted(set(tt) & perturbed) if tfs is None else [str(t) for t in tfs]
    groups = dict(tuple(tested[tested.target.isin(cand)].groupby("target")))
    empty = tested.iloc[:0]
    rows = []
    for t in cand:
        sub = groups.get(t, empty)
        feats = sub.feature.to_numpy()
        resp = sub.q.to_numpy(dtype=float) < alpha
        targets = tt.get(t, set())
        ann = np.array(
            [len(fg.get(int(f), set()) & targets) >= min_shared_genes for f in feats], bool
        )
        nU, nR, nA = len(feats), int(resp.sum()), int(ann.sum())
        obs = int((resp & ann).sum())
        expected = nR * nA / nU if nU else float("nan")
        if nR == 0 or nA == 0:
            p = p_exact = float("nan")
        else:
            draws = rng.hypergeometric(nA, nU - nA, nR, size=n_perm)
            p = (1 + int((draws >= obs).sum())) / (1 + n_perm)
            p_exact = float(hypergeom.sf(obs - 1, nU, nA, nR))
        rows.append(
            dict(
                tf=t,
                n_features=nU,
                n_responding=nR,
                n_annotated=nA,
                overlap=obs,
                expected=expected,
                fold=obs / expected if expected and expected > 0 else float("nan"),
                p=p,
                p_exact=p_exact,
            )
        )
    out = pd.DataFrame(rows, columns=REGULATORY_COLUMNS[:-1])
    out["q"] = bh(out.p.to_numpy(dtype=float)) if len(out) else np.zeros(0)
    return out[REGULATORY_COLUMNS]


# --- per-layer summary ------------------------------------------------------------------------


def layer_summary(
    layer: int,
    features: pd.DataFrame,
    *,
    enrichment: pd.DataFrame | None = None,
    libraries: list[str] | None = None,
    modules: pd.DataFrame | None = None,
    tracking: pd.DataFrame | None = None,
    alpha: float = 0.05,
) -> dict:
    """One row of the per-layer table.

    * ``features``: :func:`feature_table` (columns feature, alive);
    * ``enrichment``: gene-set enrichment, columns feature, library, q. A feature is *annotated*
    when
      it is alive and has at least one term with q < ``alpha``; ``Enrichments`` counts the
      significant (feature, term) rows; one column per library (``libraries``, default: those in
      the table) counts the annotated features of that library. ``Ann%`` = 100 Annotated / Alive.
    * ``modules``: :func:`saeflow.sae.modules.coactivation_modules` table (one row per module);
    * ``tracking``: rows of :func:`saeflow.sae.modules.track_features` for this layer (column
    ``class``).
      The last layer has no next layer: its Persistent/Moderate/Transient are NaN.
    """
    for c in ("feature", "alive"):
        if c not in features.columns:
            raise SaeflowError(f"layer_summary: feature table has no column {c!r}")
    alive = features.alive.to_numpy(bool)
    row = {"layer": int(layer), "Features": int(len(features)), "Alive": int(alive.sum())}
    alive_ids = set(features.feature.to_numpy()[alive].tolist())
    if enrichment is not None:
        for c in ("feature", "library", "q"):
            if c not in enrichment.columns:
                raise SaeflowError(
                    f"layer_summary: enrichment table has no column {c!r} "
                    f"(it has: {', '.join(map(str, enrichment.columns))})"
                )
        sig = enrichment[
            (enrichment.q.to_numpy(dtype=float) < alpha) & enrichment.feature.isin(alive_ids)
        ]
        ann = sig.feature.nunique()
        row.update(
            {
                "Annotated": int(ann),
                "Ann%": 100.0 * ann / max(1, row["Alive"]),
                "Enrichments": int(len(sig)),
            }
        )
        libs = (
            libraries if libraries is not None else sorted(enrichment.library.astype(str).unique())
        )
        per = sig.groupby(sig.library.astype(str)).feature.nunique()
        for lib in libs:
            row[str(lib)] = int(per.get(str(lib), 0))
    else:
        row.update({"Annotated": np.nan, "Ann%": np.nan, "Enrichments": np.nan})
    row["Modules"] = int(len(modules)) if modules is not None else np.nan
    for cls in ("persistent", "moderate", "transient"):
        if tracking is not None and "class" in tracking.columns and len(tracking):
            row[cls.capitalize()] = int((tracking["class"] == cls).sum())
        else:
            row[cls.capitalize()] = np.nan
    return row


def summary_table(rows: list[dict]) -> pd.DataFrame:
    """Rows of :func:`layer_summary` as a table in :data:`CELL_SUMMARY_COLUMNS` order, library
    columns (whatever else the rows carry) between ``Enrichments`` and ``Modules``."""
    df = pd.DataFrame(rows)
    extra = [c for c in df.columns if c not in CELL_SUMMARY_COLUMNS]
    i = CELL_SUMMARY_COLUMNS.index("Modules")
    cols = CELL_SUMMARY_COLUMNS[:i] + extra + CELL_SUMMARY_COLUMNS[i:]
    for c in cols:
        if c not in df.columns:
            df[c] = np.nan
    return df[cols].sort_values("layer", kind="stable").reset_index(drop=True)

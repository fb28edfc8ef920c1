"""Single-cell inputs: an h5ad of raw counts -> the cells a cell model reads.

:func:`prepare_cells` selects the cells of a dataset (for Perturb-seq, the non-targeting control
cells build the atlas; perturbed cells are kept apart for perturbation response), subsamples them
with a seed, splits them into train/test by cell, and writes

* ``cells.h5ad``: the selected cells, raw counts as CSR float32, ``var`` with the gene id and
  symbol columns the models need (``gene_id``, ``gene_symbol``);
* ``cells.parquet``: one row per cell, in the order of ``cells.h5ad``: ``name``, ``label`` (the
  label column, or ""), ``perturbation`` (or ""), ``split``: ``train`` / ``test`` for the cells
  of the atlas (the controls of a Perturb-seq screen), ``perturbed`` for the perturbed cells kept
  for the perturbation response (after the atlas cells). Only ``train`` cells train the SAE (and
  the toy cell model); only ``train``/``test`` cells enter the atlas; ``perturbed`` cells are
  read only by the perturbation-response rule.

:func:`load_cells` reads ``cells.h5ad`` back as a :class:`~saeflow.models.base.CellMatrix`.

Decisions (and why):

* **Raw counts are required.** Geneformer normalises by total counts and gene medians, scGPT bins
  per-cell values: both start from counts. A matrix with negative values (scaled data) is
  rejected, naming the file; non-integer non-negative values (already normalised) are accepted
  with a warning, since some public files ship size-factor-normalised counts.
* **Which layer.** ``layer`` names an ``adata.layers`` entry (e.g. "counts"); "" = ``X``;
  "raw" = ``adata.raw.X`` (with ``adata.raw.var``).
* **Errors name the file and the column**, and list what the file has instead.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from saeflow.utils import ENSEMBL_VERSIONED, SaeflowError, atomic_path

log = logging.getLogger(__name__)


def _read(path):
    import anndata

    path = Path(path)
    if not path.exists():
        raise SaeflowError(f"{path}: no such file")
    try:
        return anndata.read_h5ad(path)
    except Exception as e:  # h5py/anndata raise many kinds for truncated or non-h5ad files
        raise SaeflowError(f"{path}: cannot read as h5ad ({type(e).__name__}: {e})") from None


def _column(df: pd.DataFrame, col: str, what: str, path) -> pd.Series:
    if col not in df.columns:
        raise SaeflowError(
            f"{path}: {what} has no column {col!r} (it has: "
            f"{', '.join(map(str, df.columns)) or 'none'})"
        )
    return df[col]


def strip_ensembl_versions(ids, what="") -> np.ndarray:
    """``ENSG00000243485.5`` -> ``ENSG00000243485`` (Tabula Sapiens' ``ensemblid``; the models'
    dictionaries are unversioned); other ids unchanged. Logged when anything changed."""
    ids = np.asarray(ids).astype(str)
    out = pd.Series(ids).str.replace(ENSEMBL_VERSIONED, r"\1", regex=True).to_numpy().astype(str)
    n = int((out != ids).sum())
    if n:
        log.info(
            "%s: %d versioned Ensembl ids stripped of their version (e.g. %s -> %s)",
            what,
            n,
            ids[out != ids][0],
            out[out != ids][0],
        )
    return out


def prepare_cells(
    h5ad,
    out_h5ad,
    out_table,
    *,
    layer: str = "",
    perturbation_column: str = "",
    control_label: str = "",
    label_column: str = "",
    gene_id_column: str = "",
    strip_gene_versions: bool = True,
    gene_symbol_column: str = "",
    n_cells: int = 0,
    test_fraction: float = 0.3,
    seed: int = 0,
    perturbed_per_target: int = 0,
    perturbation_targets=(),
) -> pd.DataFrame:
    """Select, subsample and split the cells of ``h5ad``; see the module docstring.

    ``gene_id_column`` / ``gene_symbol_column``: ``var`` columns with Ensembl ids / symbols;
    "index" = ``var_names``; "" = not available (a model that needs it will say so).
    With ``perturbation_column`` and ``control_label``, the control cells are the atlas; with
    ``perturbed_per_target`` > 0, up to that many cells of each target (all targets, or those of
    ``perturbation_targets``; a seeded subsample) are appended with split ``perturbed``.
    """
    import scipy.sparse as sp

    adata = _read(h5ad)
    if layer == "raw":
        if adata.raw is None:
            raise SaeflowError(f"{h5ad}: layer 'raw' requested but the file has no .raw")
        X, var = adata.raw.X, adata.raw.var.copy()
        var.index = adata.raw.var_names
    elif layer:
        if layer not in adata.layers:
            raise SaeflowError(
                f"{h5ad}: no layer {layer!r} (layers: {', '.join(adata.layers) or 'none'})"
            )
        X, var = adata.layers[layer], adata.var.copy()
    else:
        X, var = adata.X, adata.var.copy()
    obs = adata.obs
    keep = np.ones(adata.n_obs, dtype=bool)
    pert = pd.Series([""] * adata.n_obs, index=obs.index)
    if perturbation_column:
        pert = _column(obs, perturbation_column, "obs", h5ad).astype(str)
        if control_label:
            keep = (pert == control_label).to_numpy()
            if not keep.any():
                top = ", ".join(pert.value_counts().index[:5])
                raise SaeflowError(
                    f"{h5ad}: no cell has {perturbation_column} == {control_label!r} (most "
                    f"common: {top})"
                )
    labels = (
        _column(obs, label_column, "obs", h5ad).astype(str)
        if label_column
        else pd.Series([""] * adata.n_obs, index=obs.index)
    )
    idx = np.flatnonzero(keep)
    rng = np.random.default_rng(seed)
    if n_cells and len(idx) > n_cells:
        idx = np.sort(rng.choice(idx, n_cells, replace=False))
    if len(idx) == 0:
        raise SaeflowError(f"{h5ad}: no cells selected")
    pert_idx = np.zeros(0, dtype=np.int64)
    if perturbed_per_target:
        if not (perturbation_column and control_label):
            raise SaeflowError(
                f"{h5ad}: perturbed_per_target needs perturbation_column and control_label"
            )
        pv = pert.to_numpy()
        wanted = [str(t) for t in perturbation_targets] or sorted(set(pv[~keep]))
        absent = [t for t in wanted if not (pv == t).any()]
        if absent and len(absent) == len(wanted):
            raise SaeflowError(
                f"{h5ad}: no cell has {perturbation_column} == {absent[0]!r}"
                + (
                    f" (nor any of the {len(absent) - 1} other targets asked for)"
                    if len(absent) > 1
                    else ""
                )
            )
        if absent:  # a curated list may name genes this screen did not target
            log.warning(
                "%s: %d of %d perturbation targets have no cells and are skipped: %s",
                h5ad,
                len(absent),
                len(wanted),
                ", ".join(absent[:20]),
            )
            wanted = [t for t in wanted if t not in absent]
        chosen = []
        for t in wanted:
            rows = np.flatnonzero(pv == t)
            if len(rows) > perturbed_per_target:
                rows = np.sort(rng.choice(rows, perturbed_per_target, replace=False))
            chosen.append(rows)
        pert_idx = np.concatenate(chosen) if chosen else pert_idx

    def gene_col(col, what):
        if not col:
            return None
        if col == "index":
            return np.asarray(var.index, dtype=object).astype(str)
        return _column(var, col, "var", h5ad).astype(str).to_numpy()

    gene_ids, symbols = (
        gene_col(gene_id_column, "gene ids"),
        gene_col(gene_symbol_column, "gene symbols"),
    )
    if gene_ids is not None and strip_gene_versions:
        gene_ids = strip_ensembl_versions(gene_ids, h5ad)
    if gene_ids is None and symbols is None:
        raise SaeflowError(
            f"{h5ad}: neither gene ids nor gene symbols configured (gene_id_column / "
            "gene_symbol_column)"
        )
    n_atlas = len(idx)
    idx = np.concatenate([idx, pert_idx])
    X = X[idx]
    X = sp.csr_matrix(X, dtype=np.float32) if not sp.issparse(X) else X.tocsr().astype(np.float32)
    data = X.data
    if data.size and not np.isfinite(data).all():
        raise SaeflowError(f"{h5ad}: the count matrix contains NaN/inf")
    if data.size and data.min() < 0:
        raise SaeflowError(
            f"{h5ad}: the count matrix has negative values (scaled data?); cell models need raw "
            "counts "
            "(set the dataset's `layer` to the counts layer, or 'raw')"
        )
    if data.size and not np.allclose(data, np.round(data)):
        log.warning(
            "%s: counts are not integers (normalised data?); the models expect raw counts", h5ad
        )
    n_test = int(round(test_fraction * n_atlas))
    split = np.array(["train"] * n_atlas + ["perturbed"] * len(pert_idx), dtype=object)
    split[rng.permutation(n_atlas)[:n_test]] = "test"
    table = pd.DataFrame(
        {
            "name": np.asarray(obs.index[idx]).astype(str),
            "label": labels.to_numpy()[idx],
            "perturbation": pert.to_numpy()[idx],
            "split": split,
        }
    )
    import anndata

    out_var = pd.DataFrame(index=pd.Index(np.asarray(var.index).astype(str), name=None))
    out_var["gene_id"] = gene_ids if gene_ids is not None else ""
    out_var["gene_symbol"] = symbols if symbols is not None else ""
    out = anndata.AnnData(
        X=X, obs=pd.DataFrame(index=pd.Index(table.name.to_numpy(), name=None)), var=out_var
    )
    out.uns["saeflow"] = {
        "has_gene_ids": gene_ids is not None,
        "has_gene_symbols": symbols is not None,
        "source": os.fspath(h5ad),
    }
    with atomic_path(out_h5ad) as tmp:
        out.write_h5ad(tmp)
    with atomic_path(out_table) as tmp:
        table.to_parquet(tmp, index=False)
    log.info(
        "%s: %d of %d cells kept (%d atlas, %d test; %d perturbed), %d genes",
        h5ad,
        len(idx),
        adata.n_obs,
        n_atlas,
        n_test,
        len(pert_idx),
        X.shape[1],
    )
    return table


def load_cells(path):
    """``cells.h5ad`` written by :func:`prepare_cells` -> CellMatrix (counts stay sparse)."""
    from saeflow.models.base import CellMatrix

    a = _read(path)
    meta = a.uns.get("saeflow", {})
    ids = (
        a.var["gene_id"].to_numpy().astype(str)
        if meta.get("has_gene_ids", "gene_id" in a.var)
        else None
    )
    syms = (
        a.var["gene_symbol"].to_numpy().astype(str)
        if meta.get("has_gene_symbols", "gene_symbol" in a.var)
        else None
    )
    import scipy.sparse as sp

    X = a.X.tocsr() if sp.issparse(a.X) else sp.csr_matrix(a.X)
    return CellMatrix(X, ids, syms, np.asarray(a.obs_names).astype(str))


def pool_cells(sources: dict, out_h5ad, out_table, out_sources=None) -> pd.DataFrame:
    """Pool several prepared cell datasets into one (a dataset's ``pool:``).

    ``sources``: name -> (cells.h5ad, cells table) as :func:`prepare_cells` wrote them, in pool
    order. The pool holds every source's atlas cells (``train``/``test``, split kept), then every
    source's ``perturbed`` cells (the order :func:`prepare_cells` guarantees), on the genes common
    to all sources: keyed by gene id when every source has ids, else by symbol (a gene a source did
    not measure is not "not expressed" there, so the union would bias rank-based models; the
    intersection is honest, and its size per source is logged and written to ``out_sources``). Cell
    names become ``source:name``; the table gains ``source``. Errors name the file.
    """
    import anndata
    import scipy.sparse as sp

    if len(sources) < 2:
        raise SaeflowError(f"a pool needs at least two sources (got {list(sources)})")
    parts = {}
    for src, (h5ad, table_path) in sources.items():
        a = _read(h5ad)
        t = pd.read_parquet(table_path)
        for c in ("name", "split", "label", "perturbation"):
            if c not in t.columns:
                raise SaeflowError(
                    f"{table_path}: no column {c!r}; prepare the cells of {src!r} again"
                )
        if len(t) != a.n_obs:
            raise SaeflowError(f"{table_path}: {len(t)} rows but {h5ad} holds {a.n_obs} cells")
        meta = a.uns.get("saeflow", {})
        parts[src] = (
            a,
            t,
            bool(meta.get("has_gene_ids", False)),
            bool(meta.get("has_gene_symbols", False)),
        )
    by_id = all(p[2] for p in parts.values())
    if not by_id and not all(p[3] for p in parts.values()):
        raise SaeflowError(
            "pool: the sources share neither gene ids nor gene symbols: "
            + ", ".join(
                f"{s} ({'ids' if p[2] else ''}{'+' if p[2] and p[3] else ''}"
                f"{'symbols' if p[3] else ''})"
                for s, p in parts.items()
            )
        )
    key = "gene_id" if by_id else "gene_symbol"
    keys = {}
    for src, (a, *_rest) in parts.items():
        k = a.var[key].astype(str).to_numpy()
        dup = pd.Index(k).duplicated()
        if dup.any():
            log.warning(
                "%s: %d duplicated %s values; the first of each is pooled",
                sources[src][0],
                int(dup.sum()),
                key,
            )
        keys[src] = pd.Index(k[~dup]), np.flatnonzero(~dup)
    first = next(iter(parts))
    common = keys[first][0]
    for src in parts:
        common = common[common.isin(keys[src][0])]
    if len(common) == 0:
        raise SaeflowError(f"pool: the sources have no {key} in common ({', '.join(parts)})")
    rows = []
    for src, (a, t, *_rest) in parts.items():
        rows.append(
            {
                "source": src,
                "cells": int(a.n_obs),
                "atlas_cells": int((t.split != "perturbed").sum()),
                "train_cells": int((t.split == "train").sum()),
                "perturbed_cells": int((t.split == "perturbed").sum()),
                "genes": int(a.n_vars),
                "genes_pooled": int(len(common)),
                "genes_dropped": int(a.n_vars - len(common)),
            }
        )
        log.info(
            "%s: %d cells, %d of its %d genes pooled (%s shared by all sources)",
            src,
            a.n_obs,
            len(common),
            a.n_vars,
            key,
        )
    blocks = {"atlas": [], "perturbed": []}
    for src, (a, t, *_rest) in parts.items():
        idx, cols = keys[src]
        sel = cols[idx.get_indexer(common)]
        X = a.X.tocsr() if sp.issparse(a.X) else sp.csr_matrix(a.X)
        X = X[:, sel].astype(np.float32)
        t = t.assign(source=src, name=src + ":" + t.name.astype(str))
        pert = (t.split == "perturbed").to_numpy()
        blocks["atlas"].append((X[~pert], t[~pert]))
        blocks["perturbed"].append((X[pert], t[pert]))
    allb = blocks["atlas"] + blocks["perturbed"]
    X = sp.vstack([b[0] for b in allb]).tocsr()
    table = pd.concat([b[1] for b in allb], ignore_index=True)
    a0 = parts[first][0]
    sel0 = keys[first][1][keys[first][0].get_indexer(common)]
    var = a0.var.iloc[sel0][["gene_id", "gene_symbol"]].copy()
    var.index = pd.Index(np.asarray(var.index).astype(str), name=None)
    out = anndata.AnnData(
        X=X, obs=pd.DataFrame(index=pd.Index(table.name.to_numpy(), name=None)), var=var
    )
    out.uns["saeflow"] = {
        "has_gene_ids": all(p[2] for p in parts.values()),
        "has_gene_symbols": all(p[3] for p in parts.values()),
        "source": ",".join(os.fspath(v[0]) for v in sources.values()),
        "pool": list(parts),
    }
    with atomic_path(out_h5ad) as tmp:
        out.write_h5ad(tmp)
    with atomic_path(out_table) as tmp:
        table.to_parquet(tmp, index=False)
    summary = pd.DataFrame(rows)
    if out_sources is not None:
        with atomic_path(out_sources) as tmp:
            summary.to_csv(tmp, sep="\t", index=False)
    log.info("pool: %d cells from %d sources, %d genes", X.shape[0], len(parts), X.shape[1])
    return summary

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

from .utils import SaeflowError, atomic_path

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
        raise SaeflowError(f"{path}: {what} has no column {col!r} (it has: {', '.join(map(str, df.columns)) or 'none'})")
    return df[col]


def prepare_cells(h5ad, out_h5ad, out_table, *, layer: str = "", perturbation_column: str = "",
                  control_label: str = "", label_column: str = "", gene_id_column: str = "",
                  gene_symbol_column: str = "", n_cells: int = 0, test_fraction: float = 0.3,
                  seed: int = 0, perturbed_per_target: int = 0, perturbation_targets=()) -> pd.DataFrame:
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
            raise SaeflowError(f"{h5ad}: no layer {layer!r} (layers: {', '.join(adata.layers) or 'none'})")
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
                raise SaeflowError(f"{h5ad}: no cell has {perturbation_column} == {control_label!r} (most common: {top})")
    labels = _column(obs, label_column, "obs", h5ad).astype(str) if label_column else pd.Series([""] * adata.n_obs, index=obs.index)
    idx = np.flatnonzero(keep)
    rng = np.random.default_rng(seed)
    if n_cells and len(idx) > n_cells:
        idx = np.sort(rng.choice(idx, n_cells, replace=False))
    if len(idx) == 0:
        raise SaeflowError(f"{h5ad}: no cells selected")
    pert_idx = np.zeros(0, dtype=np.int64)
    if perturbed_per_target:
        if not (perturbation_column and control_label):
            raise SaeflowError(f"{h5ad}: perturbed_per_target needs perturbation_column and control_label")
        pv = pert.to_numpy()
        wanted = [str(t) for t in perturbation_targets] or sorted(set(pv[~keep]))
        absent = [t for t in wanted if not (pv == t).any()]
        if absent and len(absent) == len(wanted):
            raise SaeflowError(f"{h5ad}: no cell has {perturbation_column} == {absent[0]!r}"
                               + (f" (nor any of the {len(absent) - 1} other targets asked for)" if len(absent) > 1 else ""))
        if absent:  # a curated list may name genes this screen did not target
            log.warning("%s: %d of %d perturbation targets have no cells and are skipped: %s", h5ad, len(absent),
                        len(wanted), ", ".join(absent[:20]))
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

    gene_ids, symbols = gene_col(gene_id_column, "gene ids"), gene_col(gene_symbol_column, "gene symbols")
    if gene_ids is None and symbols is None:
        raise SaeflowError(f"{h5ad}: neither gene ids nor gene symbols configured (gene_id_column / gene_symbol_column)")
    n_atlas = len(idx)
    idx = np.concatenate([idx, pert_idx])
    X = X[idx]
    X = sp.csr_matrix(X, dtype=np.float32) if not sp.issparse(X) else X.tocsr().astype(np.float32)
    data = X.data
    if data.size and not np.isfinite(data).all():
        raise SaeflowError(f"{h5ad}: the count matrix contains NaN/inf")
    if data.size and data.min() < 0:
        raise SaeflowError(f"{h5ad}: the count matrix has negative values (scaled data?); cell models need raw counts "
                           "(set the dataset's `layer` to the counts layer, or 'raw')")
    if data.size and not np.allclose(data, np.round(data)):
        log.warning("%s: counts are not integers (normalised data?); the models expect raw counts", h5ad)
    n_test = int(round(test_fraction * n_atlas))
    split = np.array(["train"] * n_atlas + ["perturbed"] * len(pert_idx), dtype=object)
    split[rng.permutation(n_atlas)[:n_test]] = "test"
    table = pd.DataFrame({"name": np.asarray(obs.index[idx]).astype(str), "label": labels.to_numpy()[idx],
                          "perturbation": pert.to_numpy()[idx], "split": split})
    import anndata

    out_var = pd.DataFrame(index=pd.Index(np.asarray(var.index).astype(str), name=None))
    out_var["gene_id"] = gene_ids if gene_ids is not None else ""
    out_var["gene_symbol"] = symbols if symbols is not None else ""
    out = anndata.AnnData(X=X, obs=pd.DataFrame(index=pd.Index(table.name.to_numpy(), name=None)), var=out_var)
    out.uns["saeflow"] = {"has_gene_ids": gene_ids is not None, "has_gene_symbols": symbols is not None,
                          "source": os.fspath(h5ad)}
    with atomic_path(out_h5ad) as tmp:
        out.write_h5ad(tmp)
    with atomic_path(out_table) as tmp:
        table.to_parquet(tmp, index=False)
    log.info("%s: %d of %d cells kept (%d atlas, %d test; %d perturbed), %d genes", h5ad, len(idx), adata.n_obs,
             n_atlas, n_test, len(pert_idx), X.shape[1])
    return table


def load_cells(path):
    """``cells.h5ad`` written by :func:`prepare_cells` -> CellMatrix (counts stay sparse)."""
    from .models.base import CellMatrix

    a = _read(path)
    meta = a.uns.get("saeflow", {})
    ids = a.var["gene_id"].to_numpy().astype(str) if meta.get("has_gene_ids", "gene_id" in a.var) else None
    syms = a.var["gene_symbol"].to_numpy().astype(str) if meta.get("has_gene_symbols", "gene_symbol" in a.var) else None
    import scipy.sparse as sp

    X = a.X.tocsr() if sp.issparse(a.X) else sp.csr_matrix(a.X)
    return CellMatrix(X, ids, syms, np.asarray(a.obs_names).astype(str))

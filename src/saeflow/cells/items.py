"""Which items a rule runs a model on: a shard of a dataset's sequences or cells, the atlas cells of
a Perturb-seq screen."""

from __future__ import annotations

import os

import pandas as pd


def shard_items(
    sequences: pd.DataFrame, start: int, end: int, cells: str | os.PathLike | None = None
):
    """Rows ``start:end`` of a dataset: of its ``cells.h5ad`` (a CellMatrix) for a cell dataset,
    whose table's rows are the cells of cells.h5ad in order; else of its sequence table."""
    if cells is not None:
        from saeflow.cells.prepare import load_cells

        return load_cells(cells)[start:end]
    return sequences.iloc[start:end]


def atlas_cells(cells, table: pd.DataFrame):
    """The cells a model learns from: the atlas cells only (the controls of a Perturb-seq screen),
    never the perturbed ones (``table``: the dataset's cell table, one row per cell, in order)."""
    from saeflow.models.base import CellMatrix

    atlas = (table.split != "perturbed").to_numpy()
    if not atlas.all():
        cells = CellMatrix(cells.X[atlas], cells.gene_ids, cells.gene_symbols, cells.names[atlas])
    return cells

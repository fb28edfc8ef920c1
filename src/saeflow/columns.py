"""Column orders of the per-layer summary tables.

Kept in a module with no heavy imports: the report rules (their env has no torch) read these.
"""

#: catalog/{sae}/summary.tsv
CATALOG_SUMMARY_COLUMNS = [
    "layer",
    "VarExpl",
    "L0",
    "Alive",
    "Dead",
    "SVD-aligned",
    "Novel",
    "MeanCos",
]

#: eval/{sae}/summary.tsv: scalar columns of the held-out evaluation
EVAL_SUMMARY_COLUMNS = [
    "layer",
    "fvu",
    "explained_variance",
    "l0",
    "dead_fraction",
    "dense_fraction",
    "loss_clean",
    "loss_zero",
    "loss_sae",
    "loss_recovered",
]

"""Column orders of the per-layer summary tables, and the cross-layer tracking classes.

Kept in a module with no heavy imports: the report and atlas rules (their envs have no torch) read
these.
"""

#: Decoder-cosine classes of a feature's best match in the next layer
#: (:func:`saeflow.sae.modules.track_features`, the atlas): a match at >= the first is
#: "moderate", at >= the second "persistent".
TRACK_THRESHOLDS = (0.7, 0.9)

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

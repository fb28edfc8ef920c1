import os

from saeflow.compare.depth import plot_by_depth
from saeflow.compare.runs import compare_layer_tables, read_layer_table, run_organisation_table
from saeflow.utils import setup_logging, write_table

setup_logging(snakemake.log[0])
runs, s, w = snakemake.params.runs, snakemake.params.settings, snakemake.wildcards
tables = {}
for r in runs:
    feats = {
        layer: read_layer_table(
            os.path.join(d, "features.parquet"), required=["feature", "alive"], what="feature table"
        )
        for layer, d in zip(r["layers"], r["files"]["features"])
    }
    tracking = r["files"].get("tracking")
    tables[r["label"]] = run_organisation_table(
        feats, read_layer_table(tracking, what="tracking table") if tracking else None
    )
n_layers = {r["label"]: r["n_layers"] for r in runs}
cols = [
    "alive",
    "module_fraction",
    "superposition_share",
    "persistent_fraction",
    "moderate_fraction",
    "transient_fraction",
]
write_table(
    compare_layer_tables(tables, n_layers, columns=cols, max_gap=s["max_gap"]),
    snakemake.output.table,
)
plot_by_depth(
    tables,
    n_layers,
    ["superposition_share", "module_fraction", "persistent_fraction"],
    snakemake.output.plot,
    title=f"{w.comparison}: feature organisation by relative depth",
)

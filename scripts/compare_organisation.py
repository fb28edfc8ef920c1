from saeflow.compare.depth import plot_by_depth
from saeflow.compare.parts import ORGANISATION_COLUMNS, organisation_tables
from saeflow.compare.runs import compare_layer_tables
from saeflow.utils import setup_logging, write_table

setup_logging(snakemake.log[0])
runs, s, w = snakemake.params.runs, snakemake.params.settings, snakemake.wildcards
tables = organisation_tables(runs)
n_layers = {r["label"]: r["n_layers"] for r in runs}
write_table(
    compare_layer_tables(tables, n_layers, columns=ORGANISATION_COLUMNS, max_gap=s["max_gap"]),
    snakemake.output.table,
)
plot_by_depth(
    tables,
    n_layers,
    ["superposition_share", "module_fraction", "persistent_fraction"],
    snakemake.output.plot,
    title=f"{w.comparison}: feature organisation by relative depth",
)

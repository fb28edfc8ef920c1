from saeflow.compare.depth import plot_by_depth
from saeflow.compare.parts import annotation_columns
from saeflow.compare.runs import annotation_rates, compare_layer_tables, read_layer_table
from saeflow.utils import setup_logging, write_table

setup_logging(snakemake.log[0])
runs, s, w = snakemake.params.runs, snakemake.params.settings, snakemake.wildcards
tables = {
    r["label"]: annotation_rates(
        read_layer_table(r["files"]["summary"], what="annotation summary"), r["kind"]
    )
    for r in runs
}
n_layers = {r["label"]: r["n_layers"] for r in runs}
rates, shared = annotation_columns(tables)
write_table(
    compare_layer_tables(tables, n_layers, columns=rates + shared, max_gap=s["max_gap"]),
    snakemake.output.table,
)
plot_by_depth(
    {k: t.reindex(columns=["layer", *rates]) for k, t in tables.items()},
    n_layers,
    rates,
    snakemake.output.plot,
    title=f"{w.comparison}: annotation rates by relative depth",
)

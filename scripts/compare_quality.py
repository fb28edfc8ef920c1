from saeflow.columns import EVAL_SUMMARY_COLUMNS
from saeflow.compare.depth import plot_by_depth
from saeflow.compare.runs import compare_layer_tables, read_layer_table
from saeflow.utils import setup_logging, write_table

setup_logging(snakemake.log[0])
runs, s, w = snakemake.params.runs, snakemake.params.settings, snakemake.wildcards
tables = {
    r["label"]: read_layer_table(
        r["files"]["summary"], required=["layer", "fvu", "l0"], what="SAE evaluation summary"
    )
    for r in runs
}
n_layers = {r["label"]: r["n_layers"] for r in runs}
cols = EVAL_SUMMARY_COLUMNS[1:]
write_table(
    compare_layer_tables(tables, n_layers, columns=cols, max_gap=s["max_gap"]),
    snakemake.output.table,
)
plot_by_depth(
    tables,
    n_layers,
    ["fvu", "l0", "dead_fraction", "loss_recovered"],
    snakemake.output.plot,
    title=f"{w.comparison}: SAE quality by relative depth",
)

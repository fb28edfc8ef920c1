from saeflow.compare.depth import plot_by_depth
from saeflow.compare.parts import head_scan_depth_tables
from saeflow.compare.runs import compare_head_scans, read_layer_table
from saeflow.utils import setup_logging, write_table

setup_logging(snakemake.log[0])
runs, s, w = snakemake.params.runs, snakemake.params.settings, snakemake.wildcards
scans = {
    r["label"]: read_layer_table(
        r["files"]["head_scan"],
        what="head scan",
        required=["motif", "layer", "head", "r", "q", "rho", "passes"],
    )
    for r in runs
}
n_layers = {r["label"]: r["n_layers"] for r in runs}
table = compare_head_scans(scans, n_layers, max_gap=s["max_gap"])
write_table(table, snakemake.output.table)
plot_by_depth(
    *head_scan_depth_tables(scans, n_layers, table.motif.unique()),
    ["best_r", "best_rho", "passing_fraction"],
    snakemake.output.plot,
    title=f"{w.comparison}: attention-head scan by relative depth",
)

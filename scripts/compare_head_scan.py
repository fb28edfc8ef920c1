from saeflow.compare.depth import plot_by_depth
from saeflow.compare.runs import compare_head_scans, head_scan_layers, read_layer_table
from saeflow.utils import setup_logging, write_table

setup_logging(snakemake.log[0])
runs, s, w = snakemake.params.runs, snakemake.params.settings, snakemake.wildcards
scans = {
    r["label"]: read_layer_table(
        r["files"]["head_scan"],
        what="head scan",
        required=["motif", "layer", "head", "r", "rho", "passes"],
    )
    for r in runs
}
n_layers = {r["label"]: r["n_layers"] for r in runs}
table = compare_head_scans(scans, n_layers, max_gap=s["max_gap"])
write_table(table, snakemake.output.table)
per = {
    (r, m): t[t.motif == m]
    for r, sc in scans.items()
    for t in [head_scan_layers(sc)]
    for m in table.motif.unique()
}
plot_by_depth(
    {f"{r} {m}": t for (r, m), t in per.items()},
    {f"{r} {m}": n_layers[r] for r, m in per},
    ["best_r", "best_rho", "passing_fraction"],
    snakemake.output.plot,
    title=f"{w.comparison}: attention-head scan by relative depth",
)

from saeflow.compare.runs import compare_probe_predictions, plot_probe_comparison, read_layer_table
from saeflow.utils import setup_logging, write_table

setup_logging(snakemake.log[0])
runs, s, w = snakemake.params.runs, snakemake.params.settings, snakemake.wildcards
preds = {
    r["label"]: read_layer_table(
        r["files"]["predictions"],
        what="probe predictions",
        required=["layer", "level", "target", "control", "item", "label", "score"],
    )
    for r in runs
}
table = compare_probe_predictions(
    preds,
    {r["label"]: r["n_layers"] for r in runs},
    control=s["probes"]["control"],
    n_boot=s["probes"]["n_boot"],
    seed=s["probes"]["seed"],
    max_gap=s["max_gap"],
)
write_table(table, snakemake.output.table)
plot_probe_comparison(
    table,
    snakemake.output.plot,
    title=(
        f"{w.comparison}: sequence probes ({s['probes']['control']}), paired on the same test items"
    ),
)

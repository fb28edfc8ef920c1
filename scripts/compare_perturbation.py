import logging

from saeflow.compare.parts import log_specificity_pairs
from saeflow.compare.perturbation import compare_specificity, plot_specificity
from saeflow.compare.runs import read_layer_table
from saeflow.utils import setup_logging, write_table

setup_logging(snakemake.log[0])
runs, s, w, alpha = (
    snakemake.params.runs,
    snakemake.params.settings,
    snakemake.wildcards,
    snakemake.params.alpha,
)
regs = {
    r["label"]: read_layer_table(
        r["files"]["regulatory"], what="regulatory-logic table", required=["layer", "tf", "q"]
    )
    for r in runs
}
targets = {
    r["label"]: read_layer_table(
        r["files"]["targets"],
        what="perturbation summary",
        required=["layer", "target", "responding"],
    )
    for r in runs
}
table, pairs = compare_specificity(
    regs,
    targets,
    {r["label"]: r["n_layers"] for r in runs},
    {r["label"]: r["layers"] for r in runs},
    alpha=alpha,
    max_gap=s["max_gap"],
)
log_specificity_pairs(pairs, logging.getLogger("compare_perturbation"))
write_table(table, snakemake.output.table)
write_table(pairs, snakemake.output.pairs)
plot_specificity(
    table,
    snakemake.output.plot,
    title=f"{w.comparison}: perturbation specificity by relative depth",
)

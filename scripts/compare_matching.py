import torch

from saeflow.compare.parts import match_runs
from saeflow.compare.runs import plot_matching
from saeflow.utils import setup_job, write_table

setup_job(snakemake)
torch.set_num_threads(snakemake.threads)
s, w = snakemake.params.settings, snakemake.wildcards
m = s["matching"]
table, features = match_runs(
    snakemake.params.runs,
    rows=m["rows"],
    threshold=m["threshold"],
    n_null=m["n_null"],
    max_rows=m["max_rows"],
    seed=m["seed"],
    max_gap=s["max_gap"],
)
write_table(table, snakemake.output.table)
write_table(features, snakemake.output.features)
plot_matching(
    table, snakemake.output.plot, title=f"{w.comparison}: feature matching vs row-shuffled null"
)

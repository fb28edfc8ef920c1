import pandas as pd

from saeflow import plots
from saeflow.utils import read_table, setup_logging, write_table

setup_logging(snakemake.log[0])
table = pd.concat([read_table(p) for p in snakemake.input], ignore_index=True).sort_values(
    ["motif_id", "layer"]
)
write_table(table, snakemake.output.table)
plots.recovery(table, snakemake.output.plot)

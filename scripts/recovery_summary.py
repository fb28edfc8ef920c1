from saeflow import plots
from saeflow.summaries import recovery_summary
from saeflow.utils import setup_logging, write_table

setup_logging(snakemake.log[0])
table = recovery_summary(snakemake.input)
write_table(table, snakemake.output.table)
plots.recovery(table, snakemake.output.plot)

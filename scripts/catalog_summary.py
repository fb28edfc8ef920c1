from saeflow import plots
from saeflow.summaries import catalog_summary
from saeflow.utils import setup_logging, write_table

setup_logging(snakemake.log[0])
summary = catalog_summary(snakemake.input)
write_table(summary, snakemake.output.table)
plots.catalog_summary(summary, snakemake.output.plot)

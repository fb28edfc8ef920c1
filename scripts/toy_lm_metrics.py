from saeflow import plots
from saeflow.summaries import toy_lm_metrics
from saeflow.utils import setup_logging, write_table

setup_logging(snakemake.log[0])
metrics, table = toy_lm_metrics(snakemake.input[0])
write_table(table, snakemake.output.table)
plots.toy_lm_accuracy(metrics, snakemake.output.plot)

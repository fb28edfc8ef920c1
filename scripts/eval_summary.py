from saeflow import plots
from saeflow.summaries import eval_summary
from saeflow.utils import setup_logging, write_table

setup_logging(snakemake.log[0])
summary = eval_summary(snakemake.input)
write_table(summary, snakemake.output.table)
plots.eval_summary(summary, snakemake.output.plot)

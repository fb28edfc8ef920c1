from saeflow.summaries import toy_cell_lm_metrics
from saeflow.utils import setup_logging, write_table

setup_logging(snakemake.log[0])
write_table(toy_cell_lm_metrics(snakemake.input[0]), snakemake.output[0])

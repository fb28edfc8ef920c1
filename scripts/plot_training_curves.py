from saeflow import plots
from saeflow.summaries import training_logs
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
plots.training_curves(training_logs(snakemake.input), snakemake.output[0])

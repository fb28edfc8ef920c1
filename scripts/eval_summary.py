import pandas as pd

from saeflow import plots
from saeflow.columns import EVAL_SUMMARY_COLUMNS as SUMMARY_COLUMNS
from saeflow.utils import read_json, setup_logging, write_table

setup_logging(snakemake.log[0])
summary = pd.DataFrame([read_json(f) for f in snakemake.input]).sort_values("layer")
summary = summary[SUMMARY_COLUMNS]
write_table(summary, snakemake.output.table)
plots.eval_summary(summary, snakemake.output.plot)

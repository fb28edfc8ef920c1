from pathlib import Path

import pandas as pd

from saeflow import plots
from saeflow.columns import CATALOG_SUMMARY_COLUMNS as SUMMARY_COLUMNS
from saeflow.utils import read_json, setup_logging, write_table

setup_logging(snakemake.log[0])
summary = pd.DataFrame([read_json(Path(d) / "summary.json") for d in snakemake.input]).sort_values(
    "layer"
)
summary = summary[SUMMARY_COLUMNS]
write_table(summary, snakemake.output.table)
plots.catalog_summary(summary, snakemake.output.plot)

from pathlib import Path

import pandas as pd

from saeflow import plots
from saeflow.utils import read_json, setup_logging, write_table

setup_logging(snakemake.log[0])
m = read_json(Path(snakemake.input[0]) / "saeflow_metrics.json")["metrics"]
write_table(
    pd.DataFrame([{"metric": k, "value": v} for k, v in sorted(m.items())]), snakemake.output.table
)
plots.toy_lm_accuracy(m, snakemake.output.plot)

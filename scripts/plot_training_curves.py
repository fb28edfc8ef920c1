import re
from pathlib import Path

import pandas as pd

from saeflow import plots
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
curves = {
    int(re.search(r"layer(\d+)$", d).group(1)): pd.read_json(
        Path(d) / "training_log.jsonl", lines=True
    )
    for d in snakemake.input
}
plots.training_curves(curves, snakemake.output[0])

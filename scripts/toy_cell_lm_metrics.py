import pandas as pd

from saeflow.utils import atomic_path, read_json, setup_logging

setup_logging(snakemake.log[0])
m = read_json(snakemake.input[0])
rows = [(k, v) for k, v in m.items() if not isinstance(v, dict)]
with atomic_path(snakemake.output[0]) as tmp:
    pd.DataFrame(rows, columns=["metric", "value"]).to_csv(tmp, sep="\t", index=False)

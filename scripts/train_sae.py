import pandas as pd

from saeflow.activations import ActivationStore, split_rows
from saeflow.sae.train import train_sae
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
store = ActivationStore(snakemake.input.acts)
train_rows, test_rows = split_rows(store.tokens, pd.read_parquet(snakemake.input.sequences))
train_sae(store, int(snakemake.wildcards.layer), snakemake.params.recipe, train_rows, test_rows,
          snakemake.output[0], threads=snakemake.threads)

import pandas as pd

from saeflow.activations import ActivationStore, split_ranges
from saeflow.sae.train import train_sae
from saeflow.utils import setup_job

setup_job(snakemake)
store = ActivationStore(snakemake.input.acts)
train, test = split_ranges(store.seq_offsets, pd.read_parquet(snakemake.input.sequences))
train_sae(store, int(snakemake.wildcards.layer), snakemake.params.recipe, train, test, snakemake.output[0],
          threads=snakemake.threads)

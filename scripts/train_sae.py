import logging

import pandas as pd

from saeflow.activations import ActivationStore, split_ranges
from saeflow.sae.train import train_sae
from saeflow.utils import setup_job

setup_job(snakemake)
store = ActivationStore(snakemake.input.acts)
sequences = pd.read_parquet(snakemake.input.sequences)
train, test = split_ranges(store.seq_offsets, sequences)
balance = snakemake.params.balance
# a pool: every source the same training cells per epoch
if balance and "source" in sequences.columns:
    from saeflow.sae.balance import balanced_index, source_counts

    sources = sequences.source.to_numpy()[sequences.split.to_numpy() == "train"]
    idx = balanced_index(
        sources, per_source=balance["per_source"], replace=True, seed=balance["seed"]
    )
    for r in source_counts(sources, idx).itertuples():
        logging.getLogger("train_sae").info(
            "balance: source %s: %d training cells, %d per epoch (%.0f%%)",
            r.source,
            r.rows,
            r.epoch_rows,
            100 * r.share,
        )
    train = train[idx]
train_sae(
    store,
    int(snakemake.wildcards.layer),
    snakemake.params.recipe,
    train,
    test,
    snakemake.output[0],
    threads=snakemake.threads,
)

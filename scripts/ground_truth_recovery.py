import pandas as pd
import torch

from saeflow.activations import ActivationStore
from saeflow.dna.recovery import recovery_table
from saeflow.sae.base import load_sae
from saeflow.utils import read_table, setup_logging, write_table

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
i = snakemake.input
table = recovery_table(
    load_sae(i.sae),
    ActivationStore(i.acts),
    int(snakemake.wildcards.layer),
    pd.read_parquet(i.sequences),
    read_table(i.planted),
)
write_table(table, snakemake.output[0])

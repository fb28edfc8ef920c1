import pandas as pd
import torch

from saeflow.cells.items import atlas_cells
from saeflow.cells.prepare import load_cells
from saeflow.cells.toy import train_toy_geneformer
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
o = snakemake.output
cells = atlas_cells(load_cells(snakemake.input.cells), pd.read_parquet(snakemake.input.table))
train_toy_geneformer(cells, o.model, snakemake.params.toy, metrics_path=o.metrics)

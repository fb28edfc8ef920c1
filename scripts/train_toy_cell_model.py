import torch

from saeflow.cells import load_cells
from saeflow.toy_cells import train_toy_geneformer
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
o = snakemake.output
train_toy_geneformer(load_cells(snakemake.input.cells), o.model, snakemake.params.toy, metrics_path=o.metrics)

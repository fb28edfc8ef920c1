import pandas as pd
import torch

from saeflow.cells.prepare import load_cells
from saeflow.cells.toy import train_toy_geneformer
from saeflow.models.base import CellMatrix
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
o = snakemake.output
cells = load_cells(snakemake.input.cells)
# the model learns from the atlas cells only (controls of a Perturb-seq screen), never the perturbed ones
atlas = (pd.read_parquet(snakemake.input.table).split != "perturbed").to_numpy()
if not atlas.all():
    cells = CellMatrix(cells.X[atlas], cells.gene_ids, cells.gene_symbols, cells.names[atlas])
train_toy_geneformer(cells, o.model, snakemake.params.toy, metrics_path=o.metrics)

import pandas as pd
import torch

from saeflow.activations import extract_activations
from saeflow.models import load_model
from saeflow.utils import setup_logging, torch_device

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
w = snakemake.wildcards
adapter = load_model(snakemake.input.model, device=torch_device())
extract_activations(
    adapter,
    pd.read_parquet(snakemake.input.sequences),
    snakemake.params.layers,
    snakemake.output[0],
    batch_size=snakemake.params.batch_size,
    meta={"model": w.model, "dataset": w.dataset, "model_path": snakemake.input.model},
)

import pandas as pd
import torch

from saeflow.activations import extract_activations, shard_bounds
from saeflow.models import load_model
from saeflow.utils import setup_job, torch_device

setup_job(snakemake)
torch.set_num_threads(snakemake.threads)
w, p = snakemake.wildcards, snakemake.params
seqs = pd.read_parquet(snakemake.input.sequences)
start, end = shard_bounds(len(seqs), p.n_shards)[int(w.shard)]
# The family keyword goes to loaders that take it (the toy family is the generic loader's default).
family = {"family": p.family} if p.family and p.family != "toy" else {}
adapter = load_model(snakemake.input.model, device=torch_device(), **family)
extract_activations(
    adapter,
    seqs.iloc[start:end],
    p.layers,
    snakemake.output[0],
    batch_size=p.batch_size,
    seq_start=start,
    meta={"model": w.model, "dataset": w.dataset, "model_path": snakemake.input.model},
)

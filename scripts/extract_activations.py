import os

import pandas as pd
import torch

from saeflow.activations import extract_activations, shard_bounds
from saeflow.cells.items import shard_items
from saeflow.models import load_model
from saeflow.utils import setup_job, torch_device

setup_job(snakemake)
torch.set_num_threads(snakemake.threads)
i, w, p = snakemake.input, snakemake.wildcards, snakemake.params
seqs = pd.read_parquet(i.sequences)
start, end = shard_bounds(len(seqs), p.n_shards)[int(w.shard)]
model_path = os.path.join(i.model, p.subfolder)  # models.<name>.subfolder ("" = the directory)
adapter = load_model(model_path, device=torch_device(), family=p.family, options=p.model_options)
items = shard_items(seqs, start, end, i.get("cells"))  # cell datasets: from cells.h5ad
extract_activations(
    adapter,
    items,
    p.layers,
    snakemake.output[0],
    batch_size=p.batch_size,
    dtype=p.dtype,
    tokens_per_item=p.tokens_per_item,
    sample_seed=p.sample_seed,
    seq_start=start,
    meta={"model": w.model, "dataset": w.dataset, "model_path": model_path},
)

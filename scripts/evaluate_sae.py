import os

import torch

from saeflow import plots
from saeflow.models import load_model
from saeflow.sae.evaluation import evaluate_sae
from saeflow.utils import setup_job, torch_device, write_json

setup_job(snakemake)
torch.set_num_threads(snakemake.threads)
i, w, p = snakemake.input, snakemake.wildcards, snakemake.params
model_path = os.path.join(i.model, p.subfolder)
adapter = load_model(model_path, device=torch_device(), family=p.family, options=p.model_options)
metrics, _ = evaluate_sae(
    i.sae,
    i.acts,
    i.sequences,
    adapter,
    int(w.layer),
    mask_prob=p.mask_prob,
    seed=p.seed,
    batch_size=p.batch_size,
    max_sequences=p.max_sequences,
    cells_path=i.get("cells"),
    min_gap=p.min_gap,
)
write_json(snakemake.output.json, dict(metrics, model=w.model, dataset=w.dataset, sae=w.sae))
plots.frequency_histogram(
    metrics["frequency_histogram"],
    snakemake.output.hist,
    title=f"{w.model} / {w.dataset} / {w.sae} / layer {w.layer}: firing frequency (held out)",
)

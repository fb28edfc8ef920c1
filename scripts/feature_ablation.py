import os

import pandas as pd
import torch

from saeflow.dna.feature_evidence import run_feature_ablation
from saeflow.models import load_model
from saeflow.sae.base import load_sae
from saeflow.utils import read_table, setup_job, torch_device, write_table

setup_job(snakemake)
torch.set_num_threads(snakemake.threads)
i, ev, p, w = snakemake.input, snakemake.params.evidence, snakemake.params, snakemake.wildcards
adapter = load_model(
    os.path.join(i.model, p.subfolder),
    device=torch_device(),
    family=p.family,
    options=p.model_options,
)
table, null = run_feature_ablation(
    adapter,
    load_sae(i.sae),
    int(w.layer),
    pd.read_parquet(i.sequences),
    read_table(i.features),
    ev["motifs"],
    n_sequences=ev["ablation_sequences"],
    n_null=ev["ablation_null"],
    batch_size=ev["batch_size"],
    seed=ev["seed"],
    alpha=ev["alpha"],
    mask_prob=ev["ablation_mask_prob"],
)
write_table(table, snakemake.output.table)
write_table(null, snakemake.output.null)

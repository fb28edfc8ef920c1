import os

import pandas as pd
import torch

from saeflow.dna.evidence import best_motif_features, feature_ablation
from saeflow.models import load_model
from saeflow.sae.base import load_sae
from saeflow.utils import read_table, setup_job, torch_device, write_table

setup_job(snakemake)
torch.set_num_threads(snakemake.threads)
i, ev, p, w = snakemake.input, snakemake.params.evidence, snakemake.params, snakemake.wildcards
adapter = load_model(os.path.join(i.model, p.subfolder), device=torch_device(), family=p.family)
sequences = pd.read_parquet(i.sequences)
feats = read_table(i.features)
targets = best_motif_features(feats, ev["motifs"])
held = sequences[sequences.split == "test"]
held = held.sample(n=min(len(held), ev["ablation_sequences"]), random_state=ev["seed"]).sort_index()
table, null = feature_ablation(
    adapter,
    load_sae(i.sae),
    int(w.layer),
    held.sequence.tolist(),
    targets,
    feats.frequency.to_numpy(),
    n_null=ev["ablation_null"],
    batch_size=ev["batch_size"],
    seed=ev["seed"],
    alpha=ev["alpha"],
    mask_prob=ev["ablation_mask_prob"],
)
table = targets[["motif", "feature", "auroc_train", "auroc_test"]].merge(
    table, on=["motif", "feature"]
)
write_table(table, snakemake.output.table)
write_table(null, snakemake.output.null)

import os

import pandas as pd
import torch

from saeflow.dna.evidence import load_motifs
from saeflow.dna.evidence_plots import patching_heatmap
from saeflow.dna.patching import run_patching
from saeflow.models import load_model
from saeflow.utils import setup_job, torch_device, write_table

setup_job(snakemake)
torch.set_num_threads(snakemake.threads)
i, ev, p, w = snakemake.input, snakemake.params.evidence, snakemake.params, snakemake.wildcards
adapter = load_model(
    os.path.join(i.model, p.subfolder),
    device=torch_device(),
    family=p.family,
    options=p.model_options,
)
pairs, per_pair, summary = run_patching(
    adapter,
    pd.read_parquet(i.sequences),
    load_motifs(ev["motifs"], ev["jaspar_release"], ev["pseudocount"], ev["threshold"]),
    n_pairs=ev["patching_pairs"],
    batch_size=ev["batch_size"],
    min_gap=ev["patching_min_gap"],
    seed=ev["seed"],
)
write_table(pairs, snakemake.output.pairs)
write_table(per_pair, snakemake.output.per_pair)
write_table(summary, snakemake.output.table)
patching_heatmap(
    summary, snakemake.output.plot, title=f"{w.model} / {w.dataset}: activation patching (mean PM)"
)

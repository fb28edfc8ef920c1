import os

import pandas as pd
import torch

from saeflow.dna.evidence import head_scan, load_motifs
from saeflow.dna.evidence_plots import head_scan_heatmap
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
motifs = load_motifs(ev["motifs"], ev["jaspar_release"], ev["pseudocount"], ev["threshold"])
table = head_scan(
    adapter,
    pd.read_parquet(i.sequences),
    motifs,
    n_sequences=ev["head_scan_sequences"],
    batch_size=ev["batch_size"],
    seed=ev["seed"],
    n_boot=ev["probe_bootstrap"],
)
write_table(table, snakemake.output.table)
head_scan_heatmap(
    table, snakemake.output.plot, title=f"{w.model} / {w.dataset}: attention-head scan"
)

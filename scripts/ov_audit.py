import os

import torch

from saeflow.compare.circuits import audit_heatmap
from saeflow.compare.parts import audit_plot_table, audit_runs
from saeflow.models import load_model
from saeflow.utils import setup_job, write_table

setup_job(snakemake)
torch.set_num_threads(snakemake.threads)
runs, s, w = snakemake.params.runs, snakemake.params.settings["audit"], snakemake.wildcards


def adapter(r):
    f = r["files"]
    return load_model(os.path.join(f["model"], r["subfolder"]), device="cpu", family=r["family"])


table = audit_runs(runs, adapter, heads=s["heads"], top_heads=s["top_heads"], k=s["k"])
write_table(table, snakemake.output.table)
audit_heatmap(
    audit_plot_table(table, len(runs)),
    snakemake.output.plot,
    value="write_cos",
    title=f"{w.comparison}: OV top output-write cosine with motif decoder rows",
)

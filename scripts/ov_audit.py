import os

import pandas as pd
import torch

from saeflow.compare.circuits import audit_heatmap
from saeflow.compare.runs import audit_run, motif_directions, read_layer_table, select_audit_heads
from saeflow.decoder import decoder_rows
from saeflow.models import load_model
from saeflow.utils import SaeflowError, setup_job, write_table

setup_job(snakemake)
torch.set_num_threads(snakemake.threads)
runs, s, w = snakemake.params.runs, snakemake.params.settings["audit"], snakemake.wildcards
frames = []
for r in runs:
    f = r["files"]
    scan = read_layer_table(
        f["head_scan"], required=["motif", "layer", "head", "r"], what="head scan"
    )
    ablation = {
        l: read_layer_table(p, required=["motif", "feature"], what="ablation table")
        for l, p in zip(r["layers"], f["ablation"])
    }
    ablation = {l: t for l, t in ablation.items() if len(t)}
    if not ablation:
        raise SaeflowError(
            f"{', '.join(f['ablation'])}: no motif feature in any layer's ablation table; nothing to audit"
        )
    decoders = {l: decoder_rows(p) for l, p in zip(r["layers"], f["saes"]) if l in ablation}
    directions = motif_directions(ablation, decoders)
    heads = select_audit_heads(
        scan, sorted(ablation), r["n_layers"], mode=s["heads"], top=s["top_heads"]
    )
    adapter = load_model(os.path.join(f["model"], r["subfolder"]), device="cpu", family=r["family"])
    weights = {b: adapter.head_weights(b) for b in sorted({b for b, _ in heads})}
    t = audit_run(weights, heads, directions, k=s["k"])
    t.insert(0, "run", r["label"])
    frames.append(t)
table = pd.concat(frames, ignore_index=True)
write_table(table, snakemake.output.table)
if len(runs) > 1:  # one heatmap: directions named by run
    table = table.assign(direction=table.run + " " + table.direction)
audit_heatmap(
    table,
    snakemake.output.plot,
    value="write_cos",
    title=f"{w.comparison}: OV top output-write cosine with motif decoder rows",
)

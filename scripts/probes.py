import pandas as pd

from saeflow.activations import ActivationStore
from saeflow.dna.evidence import run_probes
from saeflow.dna.evidence_plots import probe_heatmap
from saeflow.utils import setup_logging, write_table

setup_logging(snakemake.log[0])
i, ev, w = snakemake.input, snakemake.params.evidence, snakemake.wildcards
table, predictions = run_probes(
    ActivationStore(i.acts),
    pd.read_parquet(i.sequences),
    pd.read_parquet(i.motif_tokens),
    snakemake.params.layers,
    max_tokens=ev["probe_max_tokens"],
    n_boot=ev["probe_bootstrap"],
    seed=ev["seed"],
)
write_table(table, snakemake.output.table)
write_table(predictions, snakemake.output.predictions)
probe_heatmap(
    table,
    snakemake.output.plot,
    title=f"{w.model} / {w.dataset}: linear probes (AUROC) and controls",
)

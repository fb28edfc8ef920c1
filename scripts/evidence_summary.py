from saeflow.dna.evidence_plots import evidence_summary
from saeflow.utils import setup_logging, write_table

setup_logging(snakemake.log[0])
i, w = snakemake.input, snakemake.wildcards
table = evidence_summary(
    i.ablation,
    i.differential,
    snakemake.params.layers,
    snakemake.output.plot,
    title=f"{w.model} / {w.dataset} / {w.sae}: SAE feature evidence",
    alpha=snakemake.params.alpha,
)
write_table(table, snakemake.output.table)

import pandas as pd

from saeflow.dna.evidence import load_motifs, motif_tokens
from saeflow.utils import setup_logging, write_table

setup_logging(snakemake.log[0])
i, ev = snakemake.input, snakemake.params.evidence
motifs = load_motifs(ev["motifs"], ev["jaspar_release"], ev["pseudocount"], ev["threshold"])
tokens, sites = motif_tokens(
    pd.read_parquet(i.sequences), pd.read_parquet(f"{i.acts}/tokens.parquet"), motifs
)
write_table(tokens, snakemake.output.tokens)
write_table(sites, snakemake.output.sites)

from saeflow.dna.genome import prepare_sequences
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
i, d = snakemake.input, snakemake.params.dataset
prepare_sequences(d["kind"], d, i.get("fasta"), i.get("peaks"), i.get("table"), snakemake.output[0])

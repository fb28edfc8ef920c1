from saeflow.dna.toy import build_toy_genome
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
o = snakemake.output
build_toy_genome(snakemake.params.toy, o.fasta, o.peaks, o.signal, o.planted)

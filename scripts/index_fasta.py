from saeflow.dna.genome import bgzip_and_index
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
bgzip_and_index(snakemake.input[0], snakemake.output.fasta)

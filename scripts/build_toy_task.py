from saeflow.dna.toy import build_toy_task
from saeflow.utils import read_table, setup_logging

setup_logging(snakemake.log[0])
build_toy_task(
    snakemake.input.fasta,
    read_table(snakemake.input.planted),
    snakemake.params.task,
    snakemake.output[0],
)

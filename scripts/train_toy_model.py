from saeflow.models.toy_lm import train_toy_lm
from saeflow.utils import setup_job

setup_job(snakemake)
train_toy_lm(
    snakemake.input.fasta,
    snakemake.input.planted,
    snakemake.params.toy,
    snakemake.output[0],
    snakemake.threads,
)

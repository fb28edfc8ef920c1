from saeflow.cells.toy import write_pbmc_tissue
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
write_pbmc_tissue(snakemake.input[0], snakemake.output[0])

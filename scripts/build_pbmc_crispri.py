from saeflow.cells.toy import write_pbmc_crispri
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
write_pbmc_crispri(snakemake.input[0], snakemake.output.h5ad, snakemake.output.trrust)

from saeflow.cells.toy import write_pbmc
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
write_pbmc(snakemake.output.h5ad, snakemake.output.markers)

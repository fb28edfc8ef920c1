from saeflow.sources import build_geneset
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
spec, name = snakemake.params.spec, snakemake.wildcards.geneset
build_geneset(spec, name, snakemake.input[0], snakemake.output[0])

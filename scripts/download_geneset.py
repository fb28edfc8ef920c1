from saeflow.sources import download_geneset
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
spec, name = snakemake.params.spec, snakemake.wildcards.geneset
download_geneset(
    spec["source"], spec, spec["library"] or name, snakemake.output[0], **snakemake.params.dl
)

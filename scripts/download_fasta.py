from saeflow.download import fetch
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
fetch(p.url, snakemake.output[0], sha256=p.sha256, md5=p.md5, **p.dl)

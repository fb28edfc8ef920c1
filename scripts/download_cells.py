from saeflow.sources import cells_h5ad
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
cells_h5ad(p.url, snakemake.output[0], sha256=p.sha256, member=p.member, **p.dl)

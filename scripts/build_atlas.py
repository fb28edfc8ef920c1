from pathlib import Path

from saeflow.atlas import build_atlas
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
out = Path(snakemake.output[0])
saes = {sae: layers for sae, layers in p.saes.items()}
build_atlas(out.parent, out, saes=saes, kind=p.kind)  # the run's results/{model}/{dataset}

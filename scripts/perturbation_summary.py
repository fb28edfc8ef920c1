from saeflow.cells.analysis import summarise_perturbations
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
o, p = snakemake.output, snakemake.params
summarise_perturbations(
    list(snakemake.input.layers), p.layers, o.table, o.plot, o.regulatory, alpha=p.alpha
)

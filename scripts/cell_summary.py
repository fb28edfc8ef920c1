from saeflow.cells.analysis import summarise
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
i, o = snakemake.input, snakemake.output
summarise(list(i.layers), list(i.saes), snakemake.params.layers, o.table, o.plot, o.tracking)

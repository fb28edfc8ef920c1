from saeflow.cells.prepare import pool_cells
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
i, o = snakemake.input, snakemake.output
pool_cells(dict(zip(snakemake.params.sources, zip(i.cells, i.tables))), o.cells, o.table, o.sources)

import logging

from saeflow.models.plan import disk_budget, markdown, resource_plan, summary_line
from saeflow.utils import setup_logging, write_table

setup_logging(snakemake.log[0])
table, totals = resource_plan(snakemake.config)
write_table(table, snakemake.output[0])
logging.getLogger("saeflow").info(
    "%s\n%s", summary_line(totals, disk_budget(snakemake.config)), markdown(table)
)

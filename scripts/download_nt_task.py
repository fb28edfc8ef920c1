from saeflow.sources import nt_task
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
b, o = snakemake.params.bench, snakemake.output
nt_task(
    snakemake.wildcards.nt_task,
    o.table,
    o.raw,
    b["repo_id"],
    b["revision"],
    b["endpoint"],
    b["file_template"],
    b["splits"],
    **snakemake.params.dl,
)

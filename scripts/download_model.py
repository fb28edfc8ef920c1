from saeflow.sources import hub_snapshot, url_files
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
m, dl, out = snakemake.params.model, snakemake.params.dl, snakemake.output[0]
if m["source"] == "hub":
    h = m["hub"]
    hub_snapshot(
        h["repo_id"],
        h["revision"],
        out,
        allow_patterns=h["allow_patterns"],
        endpoint=h["endpoint"],
        n_layers=m["n_layers"] or None,
        family=m["family"],
        retries=dl["retries"],
        backoff=dl["backoff"],
        subfolder=m["subfolder"],
    )
else:
    url_files(m["files"], out, n_layers=m["n_layers"] or None, family=m["family"], **dl)

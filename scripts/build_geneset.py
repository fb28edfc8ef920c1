from pathlib import Path

from saeflow.sources import string_edges, trrust_edges, write_gmt
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
spec, name = snakemake.params.spec, snakemake.wildcards.geneset
raw, out = Path(snakemake.input[0]), snakemake.output[0]
if spec["source"] in ("enrichr", "gmt"):
    write_gmt(raw / f"{spec['library'] or name}.gmt", out, name)
elif spec["source"] == "trrust":
    trrust_edges(raw / "trrust.tsv", out)
else:
    string_edges(raw / "links.txt.gz", raw / "info.txt.gz", out, min_score=spec["min_score"])

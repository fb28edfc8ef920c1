from saeflow.sources import encode_file
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
e, w = snakemake.params.encode, snakemake.wildcards
encode_file(
    w.accession,
    snakemake.output[0],
    w.extension,
    e["url_template"],
    e["metadata_url_template"],
    verify=e["verify"],
    file_format=e["file_format"],
    assembly=e["assembly"],
    **snakemake.params.dl,
)

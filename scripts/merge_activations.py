from saeflow.activations import merge_activation_shards
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
merge_activation_shards(list(snakemake.input), snakemake.output[0])

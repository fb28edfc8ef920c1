import torch

from saeflow.cells.analysis import analyse_layer, gene_symbol_map
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
i, p = snakemake.input, snakemake.params
analyse_layer(
    i.sae,
    i.acts,
    i.table,
    int(snakemake.wildcards.layer),
    {g: i[g] for g in p.genesets},
    p.cells,
    snakemake.output[0],
    networks={n: i[f"net_{n}"] for n in p.networks},
    directed=p.networks,
    symbols=gene_symbol_map(i.cells),
)  # Ensembl ids (Geneformer) -> the libraries' symbols

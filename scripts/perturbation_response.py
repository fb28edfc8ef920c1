import torch

from saeflow.cells.analysis import analyse_perturbations
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
i, p = snakemake.input, snakemake.params
analyse_perturbations(
    i.sae,
    i.acts,
    i.table,
    i.cells,
    int(snakemake.wildcards.layer),
    p.dataset["control_label"],
    {k.removeprefix("net_"): i[k] for k in p.trrust},
    p.cells,
    snakemake.output[0],
    min_cells=p.dataset["min_cells_per_target"],
)

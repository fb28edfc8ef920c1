from saeflow.cells.prepare import prepare_cells
from saeflow.utils import setup_logging

setup_logging(snakemake.log[0])
d, o = snakemake.params.dataset, snakemake.output
prepare_cells(
    snakemake.input.h5ad,
    o.cells,
    o.table,
    layer=d["layer"],
    perturbation_column=d["perturbation_column"],
    control_label=d["control_label"],
    label_column=d["label_column"],
    gene_id_column=d["gene_id_column"] or "index",
    strip_gene_versions=d["strip_gene_versions"],
    gene_symbol_column=d["gene_symbol_column"],
    n_cells=d["n_cells"],
    test_fraction=d["test_fraction"],
    seed=d["seed"],
    perturbed_per_target=d["perturbed_cells_per_target"],
    perturbation_targets=d["perturbation_targets"],
)

# The single-cell feature atlas (cell datasets): per layer, then across layers.
# Statistics: saeflow.cellfeatures, saeflow.modules, saeflow.enrichment; orchestration:
# saeflow.cellatlas.


rule build_pbmc:
    output:
        h5ad="resources/cells/builtin/pbmc68k_reduced.h5ad",
        markers="resources/genesets/pbmc68k_markers.gmt",
    log:
        "logs/build_pbmc/build_pbmc.log",
    conda:
        "../../envs/cells.yaml"
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    script:
        "../../scripts/build_pbmc.py"


rule cell_features:
    input:
        unpack(get_geneset_gmts),
        sae="results/{model}/{dataset}/sae/{sae}/layer{layer}",
        acts="results/{model}/{dataset}/activations",
        table="results/datasets/{dataset}/sequences.parquet",
    output:
        directory("results/{model}/{dataset}/cells/{sae}/layer{layer}"),
    log:
        "logs/cell_features/{model}/{dataset}/{sae}/layer{layer}.log",
    benchmark:
        "benchmarks/cell_features/{model}/{dataset}/{sae}/layer{layer}.tsv"
    conda:
        "../../envs/cells.yaml"
    threads: get_threads
    resources:
        mem_mb=mem_mb(8000),
        runtime=60,
    params:
        genesets=lambda wc: list(get_geneset_gmts(wc)),
        cells=config["cells"],
    script:
        "../../scripts/cell_features.py"


rule cell_summary:
    input:
        layers=get_cell_layer_dirs,
        saes=get_sae_dirs,
    output:
        table=report(
            "results/{model}/{dataset}/cells/{sae}/summary.tsv",
            caption="../report/cell_summary.rst",
            category="Single-cell atlas",
        ),
        plot=report(
            "results/{model}/{dataset}/cells/{sae}/summary.png",
            caption="../report/cell_summary.rst",
            category="Single-cell atlas",
        ),
        tracking="results/{model}/{dataset}/cells/{sae}/tracking.tsv",
    log:
        "logs/cell_summary/{model}/{dataset}/{sae}.log",
    conda:
        "../../envs/cells.yaml"
    resources:
        mem_mb=mem_mb(4000),
        runtime=30,
    params:
        layers=lambda wc: get_layers(wc.model),
    script:
        "../../scripts/cell_summary.py"

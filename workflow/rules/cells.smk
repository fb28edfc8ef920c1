# The single-cell feature atlas (cell datasets): per layer, then across layers.
# Statistics: saeflow.cells.features, saeflow.sae.modules, saeflow.cells.enrichment; orchestration:
# saeflow.cells.analysis.


include: "inputs/cells.smk"


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


# The real PBMCs as non-targeting controls + simulated CRISPRi cells with a planted answer
# (saeflow.cells.toy.write_pbmc_crispri): the perturbation rules' offline default.
rule build_pbmc_crispri:
    input:
        "resources/cells/builtin/pbmc68k_reduced.h5ad",
    output:
        h5ad="resources/cells/builtin/pbmc68k_crispri.h5ad",
        trrust="resources/genesets/pbmc68k_crispri_trrust.tsv",
    log:
        "logs/build_pbmc/build_pbmc_crispri.log",
    conda:
        "../../envs/cells.yaml"
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    script:
        "../../scripts/build_pbmc_crispri.py"


# A SIMULATED second "tissue" from the same PBMCs (saeflow.cells.toy.write_pbmc_tissue): the
# offline stand-in for Tabula Sapiens in the default's pooled dataset.
rule build_pbmc_tissue:
    input:
        "resources/cells/builtin/pbmc68k_reduced.h5ad",
    output:
        "resources/cells/builtin/pbmc68k_tissue.h5ad",
    log:
        "logs/build_pbmc/build_pbmc_tissue.log",
    conda:
        "../../envs/cells.yaml"
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    script:
        "../../scripts/build_pbmc_tissue.py"


rule cell_features:
    input:
        unpack(get_geneset_gmts),
        unpack(get_network_tables),
        sae="results/{model}/{dataset}/sae/{sae}/layer{layer}",
        acts="results/{model}/{dataset}/activations",
        table="results/datasets/{dataset}/sequences.parquet",
        cells="results/datasets/{dataset}/cells.h5ad",
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
        provenance=get_provenance("cells"),
        genesets=lambda wc: list(get_geneset_gmts(wc)),
        networks=lambda wc: {n: is_trrust(n) for n in get_dataset(wc)["networks"]},
        cells=config["cells"],
    script:
        "../../scripts/cell_features.py"


rule cell_summary:
    input:
        layers=get_layer_paths("cells"),
        saes=get_layer_paths("sae"),
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
    benchmark:
        "benchmarks/cell_summary/{model}/{dataset}/{sae}.tsv"
    conda:
        "../../envs/cells.yaml"
    resources:
        mem_mb=mem_mb(4000),
        runtime=30,
    params:
        provenance=get_provenance("cells"),
        layers=lambda wc: get_layers(wc.model),
    script:
        "../../scripts/cell_summary.py"


# Perturb-seq: per layer, the features whose per-cell activation shifts in each target's cells vs
# control cells (Mann-Whitney U, BH over targets x features), and for TFs with TRRUST targets the
# regulatory-logic test (responding features enriched for features annotated to the TF's targets,
# against a permutation null).
rule perturbation_response:
    input:
        unpack(get_network_tables),
        sae="results/{model}/{dataset}/sae/{sae}/layer{layer}",
        acts="results/{model}/{dataset}/activations",
        table="results/datasets/{dataset}/sequences.parquet",
        cells="results/{model}/{dataset}/cells/{sae}/layer{layer}",
    output:
        directory("results/{model}/{dataset}/perturbation/{sae}/layer{layer}"),
    log:
        "logs/perturbation_response/{model}/{dataset}/{sae}/layer{layer}.log",
    benchmark:
        "benchmarks/perturbation_response/{model}/{dataset}/{sae}/layer{layer}.tsv"
    conda:
        "../../envs/cells.yaml"
    threads: get_threads
    resources:
        mem_mb=mem_mb(8000),
        runtime=60,
    params:
        provenance=get_provenance("cells"),
        dataset=get_dataset,
        trrust=lambda wc: [f"net_{n}" for n in get_dataset(wc)["networks"] if is_trrust(n)],
        cells=config["cells"],
    script:
        "../../scripts/perturbation_response.py"


rule perturbation_summary:
    input:
        layers=get_layer_paths("perturbation"),
    output:
        table=report(
            "results/{model}/{dataset}/perturbation/{sae}/summary.tsv",
            caption="../report/perturbation_summary.rst",
            category="Perturbation response",
        ),
        plot=report(
            "results/{model}/{dataset}/perturbation/{sae}/summary.png",
            caption="../report/perturbation_summary.rst",
            category="Perturbation response",
        ),
        regulatory="results/{model}/{dataset}/perturbation/{sae}/regulatory.tsv",
    log:
        "logs/perturbation_summary/{model}/{dataset}/{sae}.log",
    benchmark:
        "benchmarks/perturbation_summary/{model}/{dataset}/{sae}.tsv"
    conda:
        "../../envs/cells.yaml"
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    params:
        provenance=get_provenance("cells"),
        layers=lambda wc: get_layers(wc.model),
        alpha=config["cells"]["alpha"],
    script:
        "../../scripts/perturbation_summary.py"

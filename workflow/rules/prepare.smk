rule prepare_sequences:
    input:
        unpack(get_dataset_inputs),
    output:
        "results/datasets/{dataset}/sequences.parquet",
    log:
        "logs/prepare_sequences/{dataset}.log",
    benchmark:
        "benchmarks/prepare_sequences/{dataset}.tsv"
    wildcard_constraints:
        dataset=_datasets_of_kind("peaks", "task"),
    conda:
        "../../envs/genomics.yaml"
    resources:
        mem_mb=mem_mb(2000),
        runtime=30,
    params:
        provenance=get_provenance(),
        dataset=get_dataset,
    script:
        "../../scripts/prepare_sequences.py"


# Cells: the selected (e.g. control) cells' raw counts, and the cell table (name, label,
# perturbation, split) in the place of the sequence table, so SAE training and evaluation
# split by cell exactly as they split by sequence.
rule prepare_cells:
    input:
        unpack(get_dataset_inputs),
    output:
        table="results/datasets/{dataset}/sequences.parquet",
        cells="results/datasets/{dataset}/cells.h5ad",
    log:
        "logs/prepare_cells/{dataset}.log",
    benchmark:
        "benchmarks/prepare_cells/{dataset}.tsv"
    wildcard_constraints:
        dataset=_alternatives(
            n for n, d in config["datasets"].items() if d["kind"] == "cells" and not d["pool"]
        ),
    conda:
        "../../envs/torch.yaml"
    resources:
        mem_mb=mem_mb(8000),
        runtime=60,
    params:
        provenance=get_provenance(),
        dataset=get_dataset,
    script:
        "../../scripts/prepare_cells.py"


# A pool (`pool:` in a cells dataset): its sources' prepared cells side by side, on the genes they
# share, with a `source` column; SAE training balances the sources (train_sae, `balance`).
rule pool_cells:
    input:
        unpack(get_pool_inputs),
    output:
        table="results/datasets/{dataset}/sequences.parquet",
        cells="results/datasets/{dataset}/cells.h5ad",
        sources="results/datasets/{dataset}/sources.tsv",
    log:
        "logs/pool_cells/{dataset}.log",
    benchmark:
        "benchmarks/pool_cells/{dataset}.tsv"
    wildcard_constraints:
        dataset=_alternatives(n for n, d in config["datasets"].items() if d["pool"]),
    conda:
        "../../envs/cells.yaml"
    resources:
        mem_mb=mem_mb(8000),
        runtime=60,
    params:
        provenance=get_provenance(),
        sources=lambda wc: get_dataset(wc)["pool"],
    script:
        "../../scripts/pool_cells.py"

rule prepare_sequences:
    input:
        unpack(get_dataset_inputs),
    output:
        "results/datasets/{dataset}/sequences.parquet",
    log:
        "logs/prepare_sequences/{dataset}.log",
    params:
        dataset=get_dataset,
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/genomics.yaml"
    script:
        "../../scripts/prepare_sequences.py"

rule prepare_sequences:
    input:
        unpack(get_dataset_inputs),
    output:
        "results/datasets/{dataset}/sequences.parquet",
    log:
        "logs/prepare_sequences/{dataset}.log",
    conda:
        "../../envs/genomics.yaml"
    resources:
        mem_mb=mem_mb(2000),
        runtime=30,
    params:
        dataset=get_dataset,
    script:
        "../../scripts/prepare_sequences.py"

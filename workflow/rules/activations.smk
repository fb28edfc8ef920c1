rule extract_activations:
    input:
        model=get_model_dir,
        sequences="results/datasets/{dataset}/sequences.parquet",
    output:
        directory("results/{model}/{dataset}/activations"),
    log:
        "logs/extract_activations/{model}/{dataset}.log",
    benchmark:
        "benchmarks/extract_activations/{model}/{dataset}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: get_threads
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=0,
    params:
        layers=lambda wc: get_layers(wc.model),
        batch_size=lambda wc: config["models"][wc.model]["batch_size"],
    script:
        "../../scripts/extract_activations.py"

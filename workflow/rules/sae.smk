rule train_sae:
    input:
        acts="results/{model}/{dataset}/activations",
        sequences="results/datasets/{dataset}/sequences.parquet",
    output:
        directory("results/{model}/{dataset}/sae/{sae}/layer{layer}"),
    log:
        "logs/train_sae/{model}/{dataset}/{sae}/layer{layer}.log",
    benchmark:
        "benchmarks/train_sae/{model}/{dataset}/{sae}/layer{layer}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: get_threads
    resources:
        mem_mb=mem_mb(4000),
        runtime=240,
        gpu=0,
    params:
        provenance=get_provenance(),
        recipe=get_sae_recipe,
        balance=get_balance,
    script:
        "../../scripts/train_sae.py"


rule plot_training_curves:
    input:
        get_layer_paths("sae"),
    output:
        report(
            "results/{model}/{dataset}/sae/{sae}/training_curves.png",
            caption="../report/training_curves.rst",
            category="SAE training",
        ),
    log:
        "logs/plot_training_curves/{model}/{dataset}/{sae}.log",
    benchmark:
        "benchmarks/plot_training_curves/{model}/{dataset}/{sae}.tsv"
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    params:
        provenance=get_provenance(),
    script:
        "../../scripts/plot_training_curves.py"

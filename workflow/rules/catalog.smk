rule feature_catalog:
    input:
        sae="results/{model}/{dataset}/sae/{sae}/layer{layer}",
        acts="results/{model}/{dataset}/activations",
        sequences="results/datasets/{dataset}/sequences.parquet",
        model=get_model_dir,
    output:
        directory("results/{model}/{dataset}/catalog/{sae}/layer{layer}"),
    log:
        "logs/feature_catalog/{model}/{dataset}/{sae}/layer{layer}.log",
    benchmark:
        "benchmarks/feature_catalog/{model}/{dataset}/{sae}/layer{layer}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: get_threads
    resources:
        mem_mb=mem_mb(4000),
        runtime=60,
    params:
        provenance=get_provenance("catalog"),
        subfolder=get_model_subfolder,
        family=get_model_family,
        catalog=config["catalog"],
    script:
        "../../scripts/feature_catalog.py"


rule catalog_summary:
    input:
        get_layer_paths("catalog"),
    output:
        table=report(
            "results/{model}/{dataset}/catalog/{sae}/summary.tsv",
            caption="../report/catalog_summary.rst",
            category="Feature catalog",
        ),
        plot=report(
            "results/{model}/{dataset}/catalog/{sae}/summary.png",
            caption="../report/catalog_summary.rst",
            category="Feature catalog",
        ),
    log:
        "logs/catalog_summary/{model}/{dataset}/{sae}.log",
    benchmark:
        "benchmarks/catalog_summary/{model}/{dataset}/{sae}.tsv"
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    params:
        provenance=get_provenance("catalog"),
    script:
        "../../scripts/catalog_summary.py"


rule ground_truth_recovery:
    input:
        sae="results/{model}/{dataset}/sae/{sae}/layer{layer}",
        acts="results/{model}/{dataset}/activations",
        sequences="results/datasets/{dataset}/sequences.parquet",
        planted=get_planted,
    output:
        "results/{model}/{dataset}/recovery/{sae}/layer{layer}.tsv",
    log:
        "logs/ground_truth_recovery/{model}/{dataset}/{sae}/layer{layer}.log",
    benchmark:
        "benchmarks/ground_truth_recovery/{model}/{dataset}/{sae}/layer{layer}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: get_threads
    resources:
        mem_mb=mem_mb(4000),
        runtime=60,
    params:
        provenance=get_provenance(),
    script:
        "../../scripts/ground_truth_recovery.py"


rule recovery_summary:
    input:
        get_layer_paths("recovery", ".tsv"),
    output:
        table=report(
            "results/{model}/{dataset}/recovery/{sae}/recovery.tsv",
            caption="../report/recovery.rst",
            category="Ground-truth recovery",
        ),
        plot=report(
            "results/{model}/{dataset}/recovery/{sae}/recovery.png",
            caption="../report/recovery.rst",
            category="Ground-truth recovery",
        ),
    log:
        "logs/recovery_summary/{model}/{dataset}/{sae}.log",
    benchmark:
        "benchmarks/recovery_summary/{model}/{dataset}/{sae}.tsv"
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    params:
        provenance=get_provenance(),
    script:
        "../../scripts/recovery_summary.py"

rule evaluate_sae:
    input:
        unpack(get_extract_inputs),
        sae="results/{model}/{dataset}/sae/{sae}/layer{layer}",
        acts="results/{model}/{dataset}/activations",
    output:
        json="results/{model}/{dataset}/eval/{sae}/layer{layer}.json",
        hist=report(
            "results/{model}/{dataset}/eval/{sae}/layer{layer}_frequency.png",
            caption="../report/frequency_histogram.rst",
            category="SAE evaluation",
        ),
    log:
        "logs/evaluate_sae/{model}/{dataset}/{sae}/layer{layer}.log",
    benchmark:
        "benchmarks/evaluate_sae/{model}/{dataset}/{sae}/layer{layer}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: get_threads
    resources:
        mem_mb=mem_mb(4000),
        runtime=60,
        gpu=0,
    params:
        provenance=get_provenance("evaluate"),
        mask_prob=config["evaluate"]["mask_prob"],
        seed=config["evaluate"]["seed"],
        max_sequences=config["evaluate"]["max_sequences"],
        min_gap=config["evaluate"]["min_gap"],
        batch_size=lambda wc: config["models"][wc.model]["batch_size"],
        family=get_model_family,
        model_options=get_model_options,
        subfolder=get_model_subfolder,
    script:
        "../../scripts/evaluate_sae.py"


rule eval_summary:
    input:
        get_layer_paths("eval", ".json"),
    output:
        table=report(
            "results/{model}/{dataset}/eval/{sae}/summary.tsv",
            caption="../report/eval_summary.rst",
            category="SAE evaluation",
        ),
        plot=report(
            "results/{model}/{dataset}/eval/{sae}/summary.png",
            caption="../report/eval_summary.rst",
            category="SAE evaluation",
        ),
    log:
        "logs/eval_summary/{model}/{dataset}/{sae}.log",
    benchmark:
        "benchmarks/eval_summary/{model}/{dataset}/{sae}.tsv"
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    params:
        provenance=get_provenance("evaluate"),
    script:
        "../../scripts/eval_summary.py"

# Extraction scales out: each dataset's sequences are cut into `datasets.<name>.shards`
# contiguous shards, one (GPU) job each; merge_activations concatenates them into the one
# activation directory every downstream rule reads. Shards are temp(): deleted once merged.


rule extract_activations:
    input:
        unpack(get_extract_inputs),
    output:
        temp(directory("results/{model}/{dataset}/activation_shards/shard{shard}")),
    log:
        "logs/extract_activations/{model}/{dataset}/shard{shard}.log",
    benchmark:
        "benchmarks/extract_activations/{model}/{dataset}/shard{shard}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: get_threads
    resources:
        mem_mb=mem_mb(4000),
        runtime=120,
        gpu=0,
    params:
        provenance=get_provenance(),
        layers=lambda wc: get_layers(wc.model),
        batch_size=lambda wc: config["models"][wc.model]["batch_size"],
        dtype=lambda wc: config["models"][wc.model]["activation_dtype"],
        tokens_per_item=lambda wc: config["datasets"][wc.dataset]["tokens_per_item"],
        sample_seed=lambda wc: config["datasets"][wc.dataset]["seed"],
        family=get_model_family,
        model_options=get_model_options,
        subfolder=get_model_subfolder,
        n_shards=lambda wc: config["datasets"][wc.dataset]["shards"],
    script:
        "../../scripts/extract_activations.py"


rule merge_activations:
    input:
        get_activation_shards,
    output:
        directory("results/{model}/{dataset}/activations"),
    log:
        "logs/merge_activations/{model}/{dataset}.log",
    benchmark:
        "benchmarks/merge_activations/{model}/{dataset}.tsv"
    conda:
        "../../envs/torch.yaml"
    resources:
        mem_mb=mem_mb(2000),
        runtime=60,
    params:
        provenance=get_provenance(),
    script:
        "../../scripts/merge_activations.py"

# DNA mechanistic evidence (config `evidence:`): motif scans, probes with controls, attention-head
# scans, activation patching, SAE feature ablation against nulls, differential features.


include: "inputs/evidence.smk"


rule motif_tokens:
    input:
        sequences="results/datasets/{dataset}/sequences.parquet",
        acts="results/{model}/{dataset}/activations",
    output:
        tokens="results/{model}/{dataset}/evidence/motif_tokens.parquet",
        sites="results/{model}/{dataset}/evidence/motif_sites.tsv",
    log:
        "logs/motif_tokens/{model}/{dataset}.log",
    benchmark:
        "benchmarks/motif_tokens/{model}/{dataset}.tsv"
    conda:
        "../../envs/evidence.yaml"
    resources:
        mem_mb=mem_mb(4000),
        runtime=30,
    params:
        provenance=get_provenance("evidence"),
        evidence=config["evidence"],
    script:
        "../../scripts/motif_tokens.py"


rule probes:
    input:
        sequences="results/datasets/{dataset}/sequences.parquet",
        acts="results/{model}/{dataset}/activations",
        motif_tokens="results/{model}/{dataset}/evidence/motif_tokens.parquet",
    output:
        table="results/{model}/{dataset}/evidence/probes.tsv",
        predictions="results/{model}/{dataset}/evidence/probe_predictions.parquet",
        plot=report(
            "results/{model}/{dataset}/evidence/probes.png",
            caption="../report/probes.rst",
            category="DNA evidence",
        ),
    log:
        "logs/probes/{model}/{dataset}.log",
    benchmark:
        "benchmarks/probes/{model}/{dataset}.tsv"
    conda:
        "../../envs/evidence.yaml"
    threads: get_threads
    resources:
        mem_mb=mem_mb(8000),
        runtime=120,
    params:
        provenance=get_provenance("evidence"),
        evidence=config["evidence"],
        layers=lambda wc: get_layers(wc.model),
    script:
        "../../scripts/probes.py"


rule head_scan:
    input:
        sequences="results/datasets/{dataset}/sequences.parquet",
        model=get_model_dir,
    output:
        table="results/{model}/{dataset}/evidence/head_scan.tsv",
        plot=report(
            "results/{model}/{dataset}/evidence/head_scan.png",
            caption="../report/head_scan.rst",
            category="DNA evidence",
        ),
    log:
        "logs/head_scan/{model}/{dataset}.log",
    benchmark:
        "benchmarks/head_scan/{model}/{dataset}.tsv"
    conda:
        "../../envs/evidence.yaml"
    threads: get_threads
    resources:
        mem_mb=mem_mb(8000),
        runtime=60,
        gpu=0,
    params:
        provenance=get_provenance("evidence"),
        evidence=config["evidence"],
        family=get_model_family,
        model_options=get_model_options,
        subfolder=get_model_subfolder,
    script:
        "../../scripts/head_scan.py"


rule patching:
    input:
        sequences="results/datasets/{dataset}/sequences.parquet",
        model=get_model_dir,
    output:
        pairs="results/{model}/{dataset}/evidence/patching_pairs.tsv",
        per_pair="results/{model}/{dataset}/evidence/patching_per_pair.parquet",
        table="results/{model}/{dataset}/evidence/patching.tsv",
        plot=report(
            "results/{model}/{dataset}/evidence/patching.png",
            caption="../report/patching.rst",
            category="DNA evidence",
        ),
    log:
        "logs/patching/{model}/{dataset}.log",
    benchmark:
        "benchmarks/patching/{model}/{dataset}.tsv"
    conda:
        "../../envs/evidence.yaml"
    threads: get_threads
    resources:
        mem_mb=mem_mb(8000),
        runtime=120,
        gpu=0,
    params:
        provenance=get_provenance("evidence"),
        evidence=config["evidence"],
        family=get_model_family,
        model_options=get_model_options,
        subfolder=get_model_subfolder,
    script:
        "../../scripts/patching.py"


rule feature_evidence:
    input:
        sae="results/{model}/{dataset}/sae/{sae}/layer{layer}",
        acts="results/{model}/{dataset}/activations",
        sequences="results/datasets/{dataset}/sequences.parquet",
        motif_tokens="results/{model}/{dataset}/evidence/motif_tokens.parquet",
    output:
        features="results/{model}/{dataset}/evidence/{sae}/layer{layer}/motif_features.tsv",
        differential="results/{model}/{dataset}/evidence/{sae}/layer{layer}/differential.tsv",
        volcano="results/{model}/{dataset}/evidence/{sae}/layer{layer}/volcano.png",
    log:
        "logs/feature_evidence/{model}/{dataset}/{sae}/layer{layer}.log",
    benchmark:
        "benchmarks/feature_evidence/{model}/{dataset}/{sae}/layer{layer}.tsv"
    conda:
        "../../envs/evidence.yaml"
    threads: get_threads
    resources:
        mem_mb=mem_mb(4000),
        runtime=60,
    params:
        provenance=get_provenance("evidence"),
        evidence=config["evidence"],
    script:
        "../../scripts/feature_evidence.py"


rule feature_ablation:
    input:
        sae="results/{model}/{dataset}/sae/{sae}/layer{layer}",
        sequences="results/datasets/{dataset}/sequences.parquet",
        features="results/{model}/{dataset}/evidence/{sae}/layer{layer}/motif_features.tsv",
        model=get_model_dir,
    output:
        table="results/{model}/{dataset}/evidence/{sae}/layer{layer}/ablation.tsv",
        null="results/{model}/{dataset}/evidence/{sae}/layer{layer}/ablation_null.tsv",
    log:
        "logs/feature_ablation/{model}/{dataset}/{sae}/layer{layer}.log",
    benchmark:
        "benchmarks/feature_ablation/{model}/{dataset}/{sae}/layer{layer}.tsv"
    conda:
        "../../envs/evidence.yaml"
    threads: get_threads
    resources:
        mem_mb=mem_mb(8000),
        runtime=120,
        gpu=0,
    params:
        provenance=get_provenance("evidence"),
        evidence=config["evidence"],
        family=get_model_family,
        model_options=get_model_options,
        subfolder=get_model_subfolder,
    script:
        "../../scripts/feature_ablation.py"


rule evidence_summary:
    input:
        unpack(get_evidence_tables),
    output:
        table=report(
            "results/{model}/{dataset}/evidence/{sae}/summary.tsv",
            caption="../report/evidence_summary.rst",
            category="DNA evidence",
        ),
        plot=report(
            "results/{model}/{dataset}/evidence/{sae}/summary.png",
            caption="../report/evidence_summary.rst",
            category="DNA evidence",
        ),
    log:
        "logs/evidence_summary/{model}/{dataset}/{sae}.log",
    benchmark:
        "benchmarks/evidence_summary/{model}/{dataset}/{sae}.tsv"
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    params:
        provenance=get_provenance("evidence"),
        layers=lambda wc: get_layers(wc.model),
        alpha=config["evidence"]["alpha"],
    script:
        "../../scripts/evidence_summary.py"

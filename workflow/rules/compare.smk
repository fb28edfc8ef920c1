# Comparisons across runs (config `comparisons:`): per-layer tables of two or more runs lined up by
# relative depth (layer / n_layers), paired probe statistics, cross-model feature matching and
# OV/QK audits, under results/comparisons/{comparison}/.


include: "inputs/compare.smk"


rule compare_quality:
    input:
        get_comparison_inputs("quality"),
    output:
        table=report(
            "results/comparisons/{comparison}/quality.tsv",
            caption="../report/compare_quality.rst",
            category="Comparisons",
            subcategory="{comparison}",
        ),
        plot=report(
            "results/comparisons/{comparison}/quality.png",
            caption="../report/compare_quality.rst",
            category="Comparisons",
            subcategory="{comparison}",
        ),
    log:
        "logs/compare_quality/{comparison}.log",
    benchmark:
        "benchmarks/compare_quality/{comparison}.tsv"
    conda:
        "../../envs/compare.yaml"
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    params:
        provenance=get_comparison_provenance("quality"),
        runs=get_comparison_runs("quality"),
        settings=get_comparison_settings,
    script:
        "../../scripts/compare_quality.py"


rule compare_annotation:
    input:
        get_comparison_inputs("annotation"),
    output:
        table=report(
            "results/comparisons/{comparison}/annotation.tsv",
            caption="../report/compare_annotation.rst",
            category="Comparisons",
            subcategory="{comparison}",
        ),
        plot=report(
            "results/comparisons/{comparison}/annotation.png",
            caption="../report/compare_annotation.rst",
            category="Comparisons",
            subcategory="{comparison}",
        ),
    log:
        "logs/compare_annotation/{comparison}.log",
    benchmark:
        "benchmarks/compare_annotation/{comparison}.tsv"
    conda:
        "../../envs/compare.yaml"
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    params:
        provenance=get_comparison_provenance("annotation"),
        runs=get_comparison_runs("annotation"),
        settings=get_comparison_settings,
    script:
        "../../scripts/compare_annotation.py"


rule compare_organisation:
    input:
        get_comparison_inputs("organisation"),
    output:
        table=report(
            "results/comparisons/{comparison}/organisation.tsv",
            caption="../report/compare_organisation.rst",
            category="Comparisons",
            subcategory="{comparison}",
        ),
        plot=report(
            "results/comparisons/{comparison}/organisation.png",
            caption="../report/compare_organisation.rst",
            category="Comparisons",
            subcategory="{comparison}",
        ),
    log:
        "logs/compare_organisation/{comparison}.log",
    benchmark:
        "benchmarks/compare_organisation/{comparison}.tsv"
    conda:
        "../../envs/compare.yaml"
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    params:
        provenance=get_comparison_provenance("organisation"),
        runs=get_comparison_runs("organisation"),
        settings=get_comparison_settings,
    script:
        "../../scripts/compare_organisation.py"


rule compare_probes:
    input:
        get_comparison_inputs("probes"),
    output:
        table=report(
            "results/comparisons/{comparison}/probes.tsv",
            caption="../report/compare_probes.rst",
            category="Comparisons",
            subcategory="{comparison}",
        ),
        plot=report(
            "results/comparisons/{comparison}/probes.png",
            caption="../report/compare_probes.rst",
            category="Comparisons",
            subcategory="{comparison}",
        ),
    log:
        "logs/compare_probes/{comparison}.log",
    benchmark:
        "benchmarks/compare_probes/{comparison}.tsv"
    conda:
        "../../envs/compare.yaml"
    resources:
        mem_mb=mem_mb(2000),
        runtime=20,
    params:
        provenance=get_comparison_provenance("probes"),
        runs=get_comparison_runs("probes"),
        settings=get_comparison_settings,
    script:
        "../../scripts/compare_probes.py"


rule compare_head_scan:
    input:
        get_comparison_inputs("head_scan"),
    output:
        table=report(
            "results/comparisons/{comparison}/head_scan.tsv",
            caption="../report/compare_head_scan.rst",
            category="Comparisons",
            subcategory="{comparison}",
        ),
        plot=report(
            "results/comparisons/{comparison}/head_scan.png",
            caption="../report/compare_head_scan.rst",
            category="Comparisons",
            subcategory="{comparison}",
        ),
    log:
        "logs/compare_head_scan/{comparison}.log",
    benchmark:
        "benchmarks/compare_head_scan/{comparison}.tsv"
    conda:
        "../../envs/compare.yaml"
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    params:
        provenance=get_comparison_provenance("head_scan"),
        runs=get_comparison_runs("head_scan"),
        settings=get_comparison_settings,
    script:
        "../../scripts/compare_head_scan.py"


rule compare_matching:
    input:
        get_comparison_inputs("matching"),
    output:
        table=report(
            "results/comparisons/{comparison}/matching.tsv",
            caption="../report/compare_matching.rst",
            category="Comparisons",
            subcategory="{comparison}",
        ),
        features="results/comparisons/{comparison}/matching_features.parquet",
        plot=report(
            "results/comparisons/{comparison}/matching.png",
            caption="../report/compare_matching.rst",
            category="Comparisons",
            subcategory="{comparison}",
        ),
    log:
        "logs/compare_matching/{comparison}.log",
    benchmark:
        "benchmarks/compare_matching/{comparison}.tsv"
    conda:
        "../../envs/evidence.yaml"
    threads: get_threads
    resources:
        mem_mb=mem_mb(8000),
        runtime=60,
    params:
        provenance=get_comparison_provenance("matching"),
        runs=get_comparison_runs("matching"),
        settings=get_comparison_settings,
    script:
        "../../scripts/compare_matching.py"


rule ov_audit:
    input:
        get_comparison_inputs("audit"),
    output:
        table=report(
            "results/comparisons/{comparison}/ov_audit.tsv",
            caption="../report/ov_audit.rst",
            category="Comparisons",
            subcategory="{comparison}",
        ),
        plot=report(
            "results/comparisons/{comparison}/ov_audit.png",
            caption="../report/ov_audit.rst",
            category="Comparisons",
            subcategory="{comparison}",
        ),
    log:
        "logs/ov_audit/{comparison}.log",
    benchmark:
        "benchmarks/ov_audit/{comparison}.tsv"
    conda:
        "../../envs/evidence.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=20,
    params:
        provenance=get_comparison_provenance("audit"),
        runs=get_comparison_runs("audit"),
        settings=get_comparison_settings,
    script:
        "../../scripts/ov_audit.py"


rule compare_perturbation:
    input:
        get_comparison_inputs("perturbation"),
    output:
        table=report(
            "results/comparisons/{comparison}/perturbation.tsv",
            caption="../report/compare_perturbation.rst",
            category="Comparisons",
            subcategory="{comparison}",
        ),
        pairs="results/comparisons/{comparison}/perturbation_pairs.tsv",
        plot=report(
            "results/comparisons/{comparison}/perturbation.png",
            caption="../report/compare_perturbation.rst",
            category="Comparisons",
            subcategory="{comparison}",
        ),
    log:
        "logs/compare_perturbation/{comparison}.log",
    benchmark:
        "benchmarks/compare_perturbation/{comparison}.tsv"
    conda:
        "../../envs/compare.yaml"
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    params:
        provenance=get_comparison_provenance("perturbation"),
        runs=get_comparison_runs("perturbation"),
        settings=get_comparison_settings,
        alpha=config["cells"]["alpha"],
    script:
        "../../scripts/compare_perturbation.py"

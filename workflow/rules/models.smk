rule train_toy_model:
    input:
        fasta=lambda wc: f"resources/references/{config['models'][wc.model]['reference']}/genome.fa.gz",
        planted=lambda wc: f"resources/toy/{config['models'][wc.model]['reference']}/planted.tsv",
    output:
        directory("resources/models/{model}"),
    log:
        "logs/train_toy_model/{model}.log",
    benchmark:
        "benchmarks/train_toy_model/{model}.tsv"
    wildcard_constraints:
        model=_alternatives(
            n for n in _models_from("toy") if config["models"][n]["family"] != "geneformer"
        ),
    conda:
        "../../envs/torch.yaml"
    threads: get_threads
    resources:
        mem_mb=mem_mb(3000),
        runtime=60,
        gpu=0,
    params:
        provenance=get_provenance(),
        toy=lambda wc: config["models"][wc.model]["toy"],
    script:
        "../../scripts/train_toy_model.py"


rule toy_lm_metrics:
    input:
        "resources/models/{model}",
    output:
        table=report(
            "results/{model}/toy_lm_metrics.tsv",
            caption="../report/toy_lm.rst",
            category="Toy model",
        ),
        plot=report(
            "results/{model}/toy_lm_metrics.png",
            caption="../report/toy_lm.rst",
            category="Toy model",
        ),
    log:
        "logs/toy_lm_metrics/{model}.log",
    benchmark:
        "benchmarks/toy_lm_metrics/{model}.tsv"
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    params:
        provenance=get_provenance(),
    script:
        "../../scripts/toy_lm_metrics.py"


# The toy Geneformer of the embedded single-cell default: BERT over rank-value-encoded genes of a
# cells dataset (pbmc68k_reduced), saved with the dictionaries Geneformer's loader reads.
rule train_toy_cell_model:
    input:
        unpack(get_toy_cells_table),
    output:
        model=directory("resources/models/{model}"),
        metrics="results/{model}/toy_cell_lm_metrics.json",
    log:
        "logs/train_toy_cell_model/{model}.log",
    benchmark:
        "benchmarks/train_toy_cell_model/{model}.tsv"
    wildcard_constraints:
        model=_alternatives(
            n for n in _models_from("toy") if config["models"][n]["family"] == "geneformer"
        ),
    conda:
        "../../envs/torch.yaml"
    threads: get_threads
    resources:
        mem_mb=mem_mb(3000),
        runtime=60,
        gpu=0,
    params:
        provenance=get_provenance(),
        toy=lambda wc: config["models"][wc.model]["toy_cells"],
    script:
        "../../scripts/train_toy_cell_model.py"


rule toy_cell_lm_metrics:
    input:
        "results/{model}/toy_cell_lm_metrics.json",
    output:
        report(
            "results/{model}/toy_cell_lm_metrics.tsv",
            caption="../report/toy_cell_lm.rst",
            category="Toy model",
        ),
    log:
        "logs/toy_cell_lm_metrics/{model}.log",
    benchmark:
        "benchmarks/toy_cell_lm_metrics/{model}.tsv"
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=mem_mb(500),
        runtime=5,
    params:
        provenance=get_provenance(),
    script:
        "../../scripts/toy_cell_lm_metrics.py"

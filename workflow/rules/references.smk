rule build_toy_genome:
    output:
        fasta="resources/toy/{ref}/genome.fa",
        peaks="resources/toy/{ref}/peaks.bed",
        signal="resources/toy/{ref}/signal.bw",
        planted="resources/toy/{ref}/planted.tsv",
    log:
        "logs/build_toy_genome/{ref}.log",
    benchmark:
        "benchmarks/build_toy_genome/{ref}.tsv"
    conda:
        "../../envs/genomics.yaml"
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    params:
        provenance=get_provenance(),
        toy=lambda wc: config["references"][wc.ref]["toy"],
    script:
        "../../scripts/build_toy_genome.py"


rule build_toy_task:
    input:
        fasta="resources/references/{ref}/genome.fa.gz",
        planted="resources/toy/{ref}/planted.tsv",
    output:
        "resources/toy/{ref}/task.parquet",
    log:
        "logs/build_toy_task/{ref}.log",
    benchmark:
        "benchmarks/build_toy_task/{ref}.tsv"
    conda:
        "../../envs/genomics.yaml"
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    params:
        provenance=get_provenance(),
        task=lambda wc: config["references"][wc.ref]["toy"]["task"],
    script:
        "../../scripts/build_toy_task.py"


rule index_fasta:
    input:
        get_raw_fasta,
    output:
        fasta="resources/references/{ref}/genome.fa.gz",
        fai="resources/references/{ref}/genome.fa.gz.fai",
        gzi="resources/references/{ref}/genome.fa.gz.gzi",
    log:
        "logs/index_fasta/{ref}.log",
    benchmark:
        "benchmarks/index_fasta/{ref}.tsv"
    conda:
        "../../envs/genomics.yaml"
    resources:
        mem_mb=mem_mb(2000),
        runtime=60,
    params:
        provenance=get_provenance(),
    script:
        "../../scripts/index_fasta.py"

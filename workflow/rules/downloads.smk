# Downloads of the public sources and model snapshots. All are localrules (compute nodes often
# have no internet): `snakemake downloads` fetches everything the config names, on the login node.
# Every file goes to a temporary name and is moved into place only after its size and checksums
# match; each download's url, sha256, size and date are recorded beside it (<file>.sha256.json,
# or saeflow_download.json inside a model directory).


include: "inputs/downloads.smk"


rule download_fasta:
    output:
        "resources/references/{ref}/download/{file}",
    log:
        "logs/download_fasta/{ref}/{file}.log",
    wildcard_constraints:
        ref=_alternatives(n for n, r in config["references"].items() if r["source"] == "download"),
        file=r"[^/]+",
    retries: 2
    conda:
        "../../envs/download.yaml"
    params:
        url=lambda wc: config["references"][wc.ref]["url"],
        sha256=lambda wc: config["references"][wc.ref]["sha256"],
        md5=lambda wc: config["references"][wc.ref]["md5"],
        dl=config["downloads"],
    script:
        "../../scripts/download_fasta.py"


rule download_encode:
    output:
        "resources/encode/{accession}.{extension}",
    log:
        "logs/download_encode/{accession}.{extension}.log",
    wildcard_constraints:
        extension=r"bed\.gz|bigWig",
    retries: 2
    conda:
        "../../envs/download.yaml"
    params:
        encode=get_encode_params,
        dl=config["downloads"],
    script:
        "../../scripts/download_encode.py"


rule download_nt_task:
    output:
        table="resources/nt_benchmark/{nt_task}/task.parquet",
        raw=directory("resources/nt_benchmark/{nt_task}/raw"),
    log:
        "logs/download_nt_task/{nt_task}.log",
    retries: 2
    conda:
        "../../envs/download.yaml"
    params:
        bench=config["nt_benchmark"],
        dl=config["downloads"],
    script:
        "../../scripts/download_nt_task.py"


rule download_cells:
    output:
        "resources/cells/{dataset}.h5ad",
    log:
        "logs/download_cells/{dataset}.log",
    wildcard_constraints:
        dataset=_alternatives(
            n
            for n, d in config["datasets"].items()
            if d["kind"] == "cells" and not (d["h5ad"] or d["builtin"] or d["pool"])
        ),
    retries: 2
    conda:
        "../../envs/download.yaml"
    params:
        url=lambda wc: config["datasets"][wc.dataset]["url"],
        sha256=lambda wc: config["datasets"][wc.dataset]["sha256"],
        member=lambda wc: config["datasets"][wc.dataset]["member"],
        dl=config["downloads"],
    script:
        "../../scripts/download_cells.py"


rule download_geneset:
    output:
        directory("resources/genesets/raw/{geneset}"),
    log:
        "logs/download_geneset/{geneset}.log",
    retries: 2
    conda:
        "../../envs/download.yaml"
    params:
        spec=lambda wc: config["genesets"][wc.geneset],
        dl=config["downloads"],
    script:
        "../../scripts/download_geneset.py"


rule geneset_gmt:
    input:
        "resources/genesets/raw/{geneset}",
    output:
        "resources/genesets/{geneset}.gmt",
    log:
        "logs/geneset_gmt/{geneset}.log",
    benchmark:
        "benchmarks/geneset_gmt/{geneset}.tsv"
    wildcard_constraints:
        geneset=_alternatives(_genesets_from("enrichr", "gmt")),
    conda:
        "../../envs/download.yaml"
    params:
        spec=lambda wc: config["genesets"][wc.geneset],
    script:
        "../../scripts/build_geneset.py"


rule geneset_edges:
    input:
        "resources/genesets/raw/{geneset}",
    output:
        "resources/genesets/{geneset}.tsv",
    log:
        "logs/geneset_edges/{geneset}.log",
    benchmark:
        "benchmarks/geneset_edges/{geneset}.tsv"
    wildcard_constraints:
        geneset=_alternatives(_genesets_from("trrust", "string")),
    conda:
        "../../envs/download.yaml"
    resources:
        mem_mb=mem_mb(4000),
    params:
        spec=lambda wc: config["genesets"][wc.geneset],
    script:
        "../../scripts/build_geneset.py"


rule download_hub_model:
    output:
        directory("resources/models/{model}"),
    log:
        "logs/download_model/{model}.log",
    wildcard_constraints:
        model=_alternatives(_models_from("hub")),
    retries: 2
    conda:
        "../../envs/download.yaml"
    params:
        model=lambda wc: config["models"][wc.model],
        dl=config["downloads"],
    script:
        "../../scripts/download_model.py"


rule download_url_model:
    output:
        directory("resources/models/{model}"),
    log:
        "logs/download_model/{model}.log",
    wildcard_constraints:
        model=_alternatives(_models_from("url")),
    retries: 2
    conda:
        "../../envs/download.yaml"
    params:
        model=lambda wc: config["models"][wc.model],
        dl=config["downloads"],
    script:
        "../../scripts/download_model.py"


rule downloads:
    input:
        get_download_targets(),

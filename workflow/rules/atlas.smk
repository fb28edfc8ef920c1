# The feature atlas: a static web site of each run (saeflow.atlas), browsable from disk or any
# static host. Reads the catalog / cell atlas, evaluation, decoders and recovery of every SAE
# recipe of the run; per-feature evidence tables under results/{model}/{dataset}/evidence/ are
# shown when present (get_atlas_inputs lists what the rule waits for).


include: "inputs/atlas.smk"


rule atlas:
    input:
        unpack(get_atlas_inputs),
    output:
        directory("results/{model}/{dataset}/atlas"),
    log:
        "logs/atlas/{model}/{dataset}.log",
    benchmark:
        "benchmarks/atlas/{model}/{dataset}.tsv"
    conda:
        "../../envs/atlas.yaml"
    resources:
        mem_mb=mem_mb(4000),
        runtime=30,
    params:
        provenance=get_atlas_provenance,
        saes=get_atlas_saes,
        kind=lambda wc: "cells" if get_dataset(wc)["kind"] == "cells" else "dna",
    script:
        "../../scripts/build_atlas.py"

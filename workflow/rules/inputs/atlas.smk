# Input functions of the atlas rule (atlas.smk).


def get_atlas_saes(wildcards):
    """SAE recipe -> layers, over every run of this model and dataset."""
    saes = {}
    for run in config["runs"]:
        if run["model"] == wildcards.model and run["dataset"] == wildcards.dataset:
            for sae in run["saes"]:
                saes[sae] = get_layers(wildcards.model)
    return saes


def get_atlas_inputs(wildcards):
    """What the atlas reads. It shows any evidence table present under
    results/{model}/{dataset}/evidence/; those listed here it also waits for."""
    d = wildcards.dataset
    per_layer = ["sae/{sae}/layer{layer}", "eval/{sae}/layer{layer}.json"]
    if config["datasets"][d]["kind"] == "cells":
        per_layer.append("cells/{sae}/layer{layer}")
        if has_perturbations(d):
            per_layer.append("perturbation/{sae}/layer{layer}")
    else:
        per_layer.append("catalog/{sae}/layer{layer}")
    per_sae = ["recovery/{sae}/recovery.tsv"] if has_ground_truth(d) else []
    per_run = []
    if has_evidence(d):
        per_layer += [
            f"evidence/{{sae}}/layer{{layer}}/{n}.tsv" for n in ("ablation", "differential")
        ]
        per_run += [f"evidence/{n}.tsv" for n in ("probes", "head_scan", "patching")]
    base = f"results/{wildcards.model}/{d}/"
    files = []
    for sae, layers in get_atlas_saes(wildcards).items():
        files += [base + p.format(sae=sae, layer=L) for p in per_layer for L in layers]
        files += [base + p.format(sae=sae) for p in per_sae]
    return {"files": files + [base + p for p in per_run]}

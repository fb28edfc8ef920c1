# Input functions of the DNA evidence rules (evidence.smk).


def get_evidence_tables(wildcards):
    """Per layer of the job's SAE, its ablation and differential tables."""
    dirs = layer_paths(wildcards.model, wildcards.dataset, wildcards.sae, "evidence")
    return {
        name: [os.path.join(d, f"{name}.tsv") for d in dirs]
        for name in ("ablation", "differential")
    }

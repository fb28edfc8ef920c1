# Provenance params: every rule whose output depends on config values carries, as
# `params: provenance=...`, a fingerprint (saeflow.provenance) of those values AND of everything
# upstream that defines its inputs (reference -> dataset / model -> activations -> SAE recipe ->
# per-SAE analyses). Snakemake's params rerun trigger then replans each rule below a changed
# value, whether or not the intermediates in between still exist: a job that fails after a config
# change has its outputs removed, and Snakemake does not regenerate a missing intermediate whose
# consumers look up to date (snakemake PR #2966), so a value held only by the first rule's params
# would be forgotten with that rule's output (tests/workflow/test_invalidation.py).
import sys

_PROVENANCE_SRC = os.path.normpath(os.path.join(workflow.basedir, "..", "src"))
if _PROVENANCE_SRC not in sys.path:
    sys.path.insert(0, _PROVENANCE_SRC)

from saeflow.provenance import fingerprint

#: dataset keys that define no prepared table, activations or SAE: the cell analyses' annotation
#: resources (in their own fingerprint, get_provenance "cells") and the extraction job count
_DATASET_ANALYSIS_KEYS = ("genesets", "networks", "shards")


def _reference_lineage(ref):
    return {"reference": config["references"][ref]}


def _dataset_lineage(dataset):
    """The config that defines results/datasets/{dataset}/ (sequences.parquet, cells.h5ad)."""
    d = config["datasets"][dataset]
    out = {"dataset": {k: v for k, v in d.items() if k not in _DATASET_ANALYSIS_KEYS}}
    if d["kind"] == "cells":
        if d["pool"]:
            out["pool"] = {src: _dataset_lineage(src) for src in d["pool"]}
    elif d["kind"] == "task" and d["table"]:
        pass  # a table of the user's: its path is in the entry
    elif d["kind"] == "task" and d["nt_task"]:
        out["nt_benchmark"] = config["nt_benchmark"]
    elif d["reference"] in config["references"]:
        out["reference"] = _reference_lineage(d["reference"])
    return out


def _model_lineage(model):
    """The config that defines the model directory (trained here, downloaded or local)."""
    m = config["models"][model]
    out = {"model": m}
    if m["source"] == "toy" and m["family"] == "geneformer":
        out["trained_on"] = _dataset_lineage(m["toy_cells"]["dataset"])
    elif m["source"] == "toy":
        out["trained_on"] = _reference_lineage(m["reference"])
    return out


def _annotations(dataset):
    """The gene-set libraries and networks a cell dataset's features are tested against."""
    d = config["datasets"][dataset]
    specs = config["genesets"]
    return {
        "genesets": {gs: specs.get(gs, "builtin") for gs in d["genesets"]},
        "networks": {n: specs.get(n, "builtin") for n in d["networks"]},
    }


def _run_lineage(model, dataset, sae=None, settings=()):
    """Everything upstream of a run's (model, dataset[, sae]) outputs, plus the named config
    sections of the analyses in between ('evaluate', 'catalog', 'cells', 'evidence')."""
    out = {"model": _model_lineage(model), "dataset": _dataset_lineage(dataset)}
    if sae is not None:
        out["sae"] = config["saes"][sae]
    for section in settings:
        out[section] = config[section]
        if section == "cells":
            out["annotations"] = _annotations(dataset)
    return out


def get_provenance(*settings):
    """Params function: the fingerprint of a rule's config lineage, from its wildcards
    (ref; or model and/or dataset, with sae) and the config sections it (or a rule above) reads."""

    def fn(wildcards):
        wc = dict(wildcards.items())
        if "ref" in wc:
            lineage = _reference_lineage(wc["ref"])
        elif "model" in wc and "dataset" in wc:
            lineage = _run_lineage(wc["model"], wc["dataset"], wc.get("sae"), settings)
        elif "model" in wc:
            lineage = _model_lineage(wc["model"])
        else:
            lineage = _dataset_lineage(wc["dataset"])
        return fingerprint(lineage)

    return fn


def _analysis_settings(dataset):
    """The config sections of the per-SAE analyses a run's atlas reads."""
    kind = config["datasets"][dataset]["kind"]
    out = ["evaluate", "cells" if kind == "cells" else "catalog"]
    if has_evidence(dataset):
        out.append("evidence")
    return out


def get_atlas_provenance(wildcards):
    """Fingerprint of a run's atlas: the run's lineage with every SAE recipe it shows."""
    saes = sorted(get_atlas_saes(wildcards))
    lineage = _run_lineage(
        wildcards.model, wildcards.dataset, settings=_analysis_settings(wildcards.dataset)
    )
    lineage["saes"] = {sae: config["saes"][sae] for sae in saes}
    return fingerprint(lineage)


#: comparison part -> (whether what it reads of a run depends on the run's SAE, the config
#: sections of the rules that made it)
_COMPARISON_LINEAGE = {
    "quality": lambda run: (True, ["evaluate"]),
    "annotation": lambda run: (True, _analysis_settings(run["dataset"])[1:2]),
    "organisation": lambda run: (True, _analysis_settings(run["dataset"])[1:2]),
    "probes": lambda run: (False, ["evidence"]),
    "head_scan": lambda run: (False, ["evidence"]),
    "matching": lambda run: (True, []),
    "audit": lambda run: (True, ["evidence"]),
    "perturbation": lambda run: (True, ["cells"]),
}


def get_comparison_provenance(part):
    """Params function of a comparison rule: the fingerprint of each compared run's lineage."""

    def fn(wildcards):
        lineages = []
        for run in _comparison_runs_of(wildcards.comparison, part):
            with_sae, settings = _COMPARISON_LINEAGE[part](run)
            sae = run["sae"] if with_sae else None
            lineages.append(_run_lineage(run["model"], run["dataset"], sae, settings))
        return fingerprint(lineages)

    return fn

# Input functions and params of the comparison rules (compare.smk): per comparison run, the files
# each part reads.

from types import SimpleNamespace


def _run_base(run):
    return f"results/{run['model']}/{run['dataset']}"


def _run_layer_paths(run, stage, name=""):
    """Per layer of a run: results/{model}/{dataset}/{stage}/{sae}/layer{L}[/name]."""
    dirs = layer_paths(run["model"], run["dataset"], run["sae"], stage)
    return [os.path.join(d, name) for d in dirs] if name else dirs


def _comparison_run_files(run, part):
    """The files of one run a comparison part reads (name -> path or list of paths)."""
    base, sae = _run_base(run), run["sae"]
    cells = config["datasets"][run["dataset"]]["kind"] == "cells"
    if part == "quality":
        return {"summary": f"{base}/eval/{sae}/summary.tsv"}
    if part == "annotation":
        return {"summary": f"{base}/{'cells' if cells else 'catalog'}/{sae}/summary.tsv"}
    if part == "organisation":
        files = {"features": _run_layer_paths(run, "cells" if cells else "catalog")}
        if cells:
            files["tracking"] = f"{base}/cells/{sae}/tracking.tsv"
        return files
    if part == "probes":
        return {"predictions": f"{base}/evidence/probe_predictions.parquet"}
    if part == "head_scan":
        return {"head_scan": f"{base}/evidence/head_scan.tsv"}
    if part == "matching":
        return {
            "saes": _run_layer_paths(run, "sae"),
            "activations": f"{base}/activations",
            "sequences": f"results/datasets/{run['dataset']}/sequences.parquet",
        }
    if part == "audit":
        return {
            "head_scan": f"{base}/evidence/head_scan.tsv",
            "model": get_model_dir(SimpleNamespace(model=run["model"])),
            "saes": _run_layer_paths(run, "sae"),
            "ablation": _run_layer_paths(run, "evidence", "ablation.tsv"),
        }
    if part == "perturbation":
        return {
            "regulatory": f"{base}/perturbation/{sae}/regulatory.tsv",
            "targets": f"{base}/perturbation/{sae}/summary.tsv",
        }
    raise ValueError(f"unknown comparison part {part!r}")


def _comparison_runs_of(name, part):
    comp = COMPARISONS[name]
    runs = comp["runs"]
    if part == "audit":
        return [runs[j] for j in comp["audit"]["runs"]]
    return runs


def get_comparison_runs(part):
    """Params of a comparison rule: per run its label, model, dataset, sae, kind, n_layers, layers
    and the files it reads (the same paths as the rule's input)."""

    def fn(wildcards):
        comp = COMPARISONS[wildcards.comparison]
        out = []
        for run in _comparison_runs_of(wildcards.comparison, part):
            m = config["models"][run["model"]]
            out.append(
                dict(
                    label=comp["labels"][comp["runs"].index(run)],
                    model=run["model"],
                    dataset=run["dataset"],
                    sae=run["sae"],
                    kind=config["datasets"][run["dataset"]]["kind"],
                    family=m["family"],
                    subfolder=m["subfolder"],
                    n_layers=get_n_layers(run["model"]),
                    layers=get_layers(run["model"]),
                    files=_comparison_run_files(run, part),
                )
            )
        return out

    return fn


def get_comparison_inputs(part):
    """Input function of a comparison rule: every file its runs contribute (flattened)."""

    def fn(wildcards):
        out = []
        for run in _comparison_runs_of(wildcards.comparison, part):
            for v in _comparison_run_files(run, part).values():
                out += v if isinstance(v, list) else [v]
        return sorted(set(out), key=out.index)

    return fn


def get_comparison_settings(wildcards):
    comp = COMPARISONS[wildcards.comparison]
    return {k: v for k, v in comp.items() if k not in ("runs", "labels")}


def get_comparison_targets():
    out = []
    for name, comp in COMPARISONS.items():
        if not comp["active"]:
            continue
        out += [
            f"results/comparisons/{name}/{'ov_audit' if p == 'audit' else p}.tsv"
            for p in comp["parts"]
        ]
    return out

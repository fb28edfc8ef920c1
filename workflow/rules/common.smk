# Config validation and resolution (saeflow.config), wildcard constraints, and the input functions
# shared by several rule files; those of one rule family live beside its rules.
# Kept import-light: every SLURM job re-parses this file.
import json
import os
import re
import sys

from snakemake.utils import validate

# Scripts import the saeflow library from this checkout's src/ (conda envs hold only its
# dependencies), also inside SLURM jobs, which re-read this file. Code changes take effect
# without rebuilding any env. This file imports saeflow.config from there too.
_SRC = os.path.normpath(os.path.join(workflow.basedir, "..", "src"))
if os.path.isdir(_SRC) and _SRC not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ.update(
        PYTHONPATH=os.pathsep.join(p for p in (_SRC, os.environ.get("PYTHONPATH")) if p)
    )
if os.path.isdir(_SRC) and _SRC not in sys.path:
    sys.path.insert(0, _SRC)

import saeflow.config as saeflow_config


def _resolve_config():
    """Validate (and fill defaults; on failure name every offending key in one short message),
    then check cross-references, expand SAE sweeps and resolve comparisons, in place."""
    import yaml

    with open(workflow.source_path("../schemas/config.schema.yaml")) as fh:
        schema = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    try:
        validate(config, schema="../schemas/config.schema.yaml")
    except Exception:
        saeflow_config.check_schema(config, schema)
        raise
    config.update(saeflow_config.resolve(config, schema))


_resolve_config()

#: comparison name -> its resolved config entry (rules in compare.smk)
COMPARISONS = {comp["name"]: comp for comp in config["comparisons"]}


def has_perturbations(dataset):
    return saeflow_config.has_perturbations(config, dataset)


def has_evidence(dataset):
    """The DNA evidence rules run on every DNA run (peaks or task datasets) unless disabled."""
    return saeflow_config.has_evidence(config, dataset)


def _alternatives(keys):
    return "|".join(sorted(re.escape(str(k)) for k in keys)) or "__none__"


def _models_from(*sources):
    return [n for n, m in config["models"].items() if m["source"] in sources]


def _genesets_from(*sources):
    return [n for n, g in config["genesets"].items() if g["source"] in sources]


def _nt_tasks():
    return {
        d["nt_task"] for d in config["datasets"].values() if d["kind"] == "task" and d["nt_task"]
    }


wildcard_constraints:
    model=_alternatives(config["models"]),
    dataset=_alternatives(config["datasets"]),
    ref=_alternatives(config["references"]),
    sae=_alternatives(config["saes"]),
    comparison=_alternatives(COMPARISONS),
    geneset=_alternatives(config["genesets"]),
    nt_task=_alternatives(_nt_tasks()),
    accession=r"ENCFF[0-9A-Z]+",
    layer=r"\d+",
    shard=r"\d+",


# --- references -----------------------------------------------------------------


def _raw_fasta(name):
    ref = config["references"][name]
    if ref["source"] == "toy":
        return f"resources/toy/{name}/genome.fa"
    if ref["source"] == "download":
        return f"resources/references/{name}/download/{saeflow_config.url_basename(ref['url'], 'genome.fa')}"
    return ref["fasta"]


def get_raw_fasta(wildcards):
    return _raw_fasta(wildcards.ref)


#: ENCODE accession keys of a downloaded reference: file extension and ENCODE file_format.
ENCODE_FILES = {"peaks": ("bed.gz", "bed"), "signal": ("bigWig", "bigWig")}


def _ref_file(ref_name, key):
    ref = config["references"][ref_name]
    if ref["source"] == "toy":
        return {
            "peaks": f"resources/toy/{ref_name}/peaks.bed",
            "planted": f"resources/toy/{ref_name}/planted.tsv",
            "signal": f"resources/toy/{ref_name}/signal.bw",
        }[key]
    if ref["source"] == "download" and not ref[key] and key in ENCODE_FILES:
        acc = ref[f"encode_{key}"]
        return f"resources/encode/{acc}.{ENCODE_FILES[key][0]}" if acc else ""
    return ref[key]


def get_dataset(wildcards):
    return config["datasets"][wildcards.dataset]


def get_dataset_inputs(wildcards):
    d = get_dataset(wildcards)
    ref = d["reference"]
    if d["kind"] == "peaks":
        return {
            "fasta": f"resources/references/{ref}/genome.fa.gz",
            "peaks": _ref_file(ref, "peaks"),
        }
    if d["kind"] == "cells":
        return {"h5ad": get_cells_h5ad(wildcards)}
    if d["table"]:
        return {"table": d["table"]}
    if d["nt_task"]:
        return {"table": f"resources/nt_benchmark/{d['nt_task']}/task.parquet"}
    return {"table": f"resources/toy/{ref}/task.parquet"}


def _datasets_of_kind(*kinds):
    return _alternatives(n for n, d in config["datasets"].items() if d["kind"] in kinds)


def get_extract_inputs(wildcards):
    """The model, the sequence (or cell) table, and for cell datasets the prepared cells."""
    inputs = {
        "model": get_model_dir(wildcards),
        "sequences": f"results/datasets/{wildcards.dataset}/sequences.parquet",
    }
    if get_dataset(wildcards)["kind"] == "cells":
        inputs["cells"] = f"results/datasets/{wildcards.dataset}/cells.h5ad"
    return inputs


def get_cells_h5ad(wildcards):
    d = get_dataset(wildcards)
    if d["h5ad"]:
        return d["h5ad"]
    if d["builtin"]:
        return f"resources/cells/builtin/{d['builtin']}.h5ad"
    return f"resources/cells/{wildcards.dataset}.h5ad"


def get_pool_inputs(wildcards):
    """The prepared cells and cell tables of a pool's sources, in pool order."""
    srcs = get_dataset(wildcards)["pool"]
    return {
        "cells": [f"results/datasets/{s}/cells.h5ad" for s in srcs],
        "tables": [f"results/datasets/{s}/sequences.parquet" for s in srcs],
    }


def get_balance(wildcards):
    """SAE training balance over a pool's sources (None: not a pool, or balance off)."""
    d = get_dataset(wildcards)
    if not (d["kind"] == "cells" and d["pool"] and d["balance"]):
        return None
    return {"per_source": d["cells_per_source"] or None, "seed": d["seed"]}


def get_toy_cells_table(wildcards):
    ds = config["models"][wildcards.model]["toy_cells"]["dataset"]
    return {
        "cells": f"results/datasets/{ds}/cells.h5ad",
        "table": f"results/datasets/{ds}/sequences.parquet",
    }


def get_planted(wildcards):
    ref = get_dataset(wildcards)["reference"]
    return _ref_file(ref, "planted")


def has_ground_truth(dataset):
    d = config["datasets"][dataset]
    if d["kind"] == "cells":
        return False
    if d["kind"] == "task" and d["nt_task"] or d["reference"] not in config["references"]:
        return False  # a downloaded task table (or one on no reference): nothing planted
    ref = config["references"][d["reference"]]
    return ref["source"] == "toy" or bool(ref["planted"])


# --- models -----------------------------------------------------------------------


def get_model_dir(wildcards):
    m = config["models"][wildcards.model]
    if m["source"] == "local":
        return m["path"]
    return f"resources/models/{wildcards.model}"  # trained (toy) or downloaded (hub, url)


def get_model_subfolder(wildcards):
    return config["models"][wildcards.model]["subfolder"]


def get_model_family(wildcards):
    return config["models"][wildcards.model]["family"]


def get_model_options(wildcards):
    """Loader options by family (saeflow.models.load_model's ``options``): the model's
    ``geneformer`` settings, used when it loads as a Geneformer."""
    return {"geneformer": config["models"][wildcards.model]["geneformer"]}


def _local_depth(model, directory):
    """Blocks of a local checkpoint: config.json num_hidden_layers, or scGPT's args.json nlayers."""
    for name, key in (("config.json", "num_hidden_layers"), ("args.json", "nlayers")):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as fh:
                return int(json.load(fh)[key])
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"models.{model}.path: cannot read {key} from {path}: {e}")
    raise ValueError(
        f"models.{model}.path: no config.json (nor scGPT's args.json) in {directory} to read the "
        f"number of layers from; list models.{model}.layers or set n_layers"
    )


def get_n_layers(model):
    """Blocks of a model (the denominator of relative depth): config for toy, hub and url models,
    the checkpoint's config.json (args.json for scGPT) for local ones."""
    m = config["models"][model]
    if m["source"] == "toy":
        return m["toy_cells" if m["family"] == "geneformer" else "toy"]["num_layers"]
    if m["n_layers"]:
        return m["n_layers"]
    if m["source"] == "local":
        return _local_depth(model, os.path.join(m["path"], m["subfolder"]))
    return max(m["layers"])  # a hub or url model lists its layers (config check)


def get_layers(model):
    """Layers of a model: those listed in config, else 1..get_n_layers."""
    m = config["models"][model]
    return list(m["layers"]) if m["layers"] else list(range(1, get_n_layers(model) + 1))


def layer_paths(model, dataset, sae, stage, suffix=""):
    """Per layer of a model: results/{model}/{dataset}/{stage}/{sae}/layer{L}{suffix}."""
    return [
        f"results/{model}/{dataset}/{stage}/{sae}/layer{layer}{suffix}"
        for layer in get_layers(model)
    ]


def get_layer_paths(stage, suffix=""):
    """Input function: layer_paths of the job's model, dataset and SAE."""
    return lambda wc: layer_paths(wc.model, wc.dataset, wc.sae, stage, suffix)


def get_sae_recipe(wildcards):
    return config["saes"][wildcards.sae]


def get_threads(wildcards=None):
    return config["threads"]


def mem_mb(base):
    """A memory request (MB) that grows with each retry: base on attempt 1, 2x base on attempt 2, ...

    So a job killed for memory (OOM, or SLURM's memory limit) is retried with more.
    """
    return lambda wildcards, attempt: base * attempt


def get_activation_shards(wildcards):
    return expand(
        "results/{model}/{dataset}/activation_shards/shard{shard}",
        model=wildcards.model,
        dataset=wildcards.dataset,
        shard=range(config["datasets"][wildcards.dataset]["shards"]),
    )


# --- targets ----------------------------------------------------------------------


def get_final_outputs():
    out = []
    for run in config["runs"]:
        m, d = run["model"], run["dataset"]
        if config["models"][m]["source"] == "toy":
            toy_cells = config["models"][m]["family"] == "geneformer"
            out.append(f"results/{m}/toy_{'cell_' if toy_cells else ''}lm_metrics.tsv")
        cells = config["datasets"][d]["kind"] == "cells"
        for sae in run["saes"]:
            base = f"results/{m}/{d}"
            out += [
                f"{base}/sae/{sae}/training_curves.png",
                f"{base}/eval/{sae}/summary.tsv",
                f"{base}/eval/{sae}/summary.png",
            ]
            if cells:  # the cell atlas: genes, cells, gene sets, modules, tracking
                out += [f"{base}/cells/{sae}/summary.tsv", f"{base}/cells/{sae}/summary.png"]
                if has_perturbations(d):
                    out += [
                        f"{base}/perturbation/{sae}/summary.tsv",
                        f"{base}/perturbation/{sae}/summary.png",
                    ]
            else:  # the DNA catalog: bases and contexts
                out += [f"{base}/catalog/{sae}/summary.tsv", f"{base}/catalog/{sae}/summary.png"]
            if has_evidence(d):
                out += [
                    f"{base}/evidence/{sae}/summary.tsv",
                    f"{base}/evidence/{sae}/summary.png",
                ]
            if has_ground_truth(d):
                out += [
                    f"{base}/recovery/{sae}/recovery.tsv",
                    f"{base}/recovery/{sae}/recovery.png",
                ]
        if has_evidence(d):  # per run, whatever the SAE
            out += [
                f"results/{m}/{d}/evidence/{name}.png"
                for name in ("probes", "head_scan", "patching")
            ]
        out.append(f"results/{m}/{d}/atlas")  # the feature atlas (rules/atlas.smk)
    out += get_comparison_targets()
    return sorted(set(out), key=out.index)

# Input functions, wildcard constraints and config validation.
# Kept import-light: every SLURM job re-parses this file.
import json
import os
import re
from types import SimpleNamespace

from snakemake.utils import validate


def _validate_config():
    """Validate (and fill defaults); on failure name every offending key in one short message."""
    try:
        validate(config, schema="../schemas/config.schema.yaml")
    except Exception as e:
        import jsonschema
        import yaml

        with open(workflow.source_path("../schemas/config.schema.yaml")) as fh:
            schema = yaml.safe_load(fh)
        validator = jsonschema.Draft202012Validator(schema)
        problems = [
            f"{'.'.join(map(str, err.absolute_path)) or '<top level>'}: {err.message}"
            for err in sorted(
                validator.iter_errors(config), key=lambda er: list(map(str, er.absolute_path))
            )
        ]
        if not problems:
            raise
        raise ValueError(
            "invalid config (see config/README.md):\n  " + "\n  ".join(problems)
        ) from None


_validate_config()

# Scripts import the saeflow library from this checkout's src/ (conda envs hold only its
# dependencies), also inside SLURM jobs, which re-read this file. Code changes take effect
# without rebuilding any env.
_SRC = os.path.normpath(os.path.join(workflow.basedir, "..", "src"))
if os.path.isdir(_SRC) and _SRC not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ.update(
        PYTHONPATH=os.pathsep.join(p for p in (_SRC, os.environ.get("PYTHONPATH")) if p)
    )


def _url_basename(url, default="download"):
    """The last path component of a URL (no query), safe as a file name."""
    from urllib.parse import unquote, urlsplit

    name = os.path.basename(unquote(urlsplit(url).path).rstrip(os.sep))
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return name or default


def _builtins_of(dataset):
    """The builtin datasets a cells dataset is (or pools)."""
    d = config["datasets"][dataset]
    srcs = [config["datasets"].get(s, {}) for s in d.get("pool") or []] or [d]
    return {s.get("builtin") for s in srcs} - {"", None}


def has_perturbations(dataset):
    d = config["datasets"][dataset]
    if d["kind"] == "cells" and d["pool"]:
        return any(has_perturbations(s) for s in d["pool"])
    return d["kind"] == "cells" and d["perturbed_cells_per_target"] > 0


def _check_config():
    """Cross-references the JSON schema cannot express; errors name the key."""
    errors = []
    refs, models, dsets, saes = (
        config["references"],
        config["models"],
        config["datasets"],
        config["saes"],
    )
    for name, ref in refs.items():
        if ref["source"] == "files" and not ref["fasta"]:
            errors.append(f"references.{name}.fasta: required when source is 'files'")
        if ref["source"] == "download" and not ref["url"]:
            errors.append(f"references.{name}.url: required when source is 'download'")
    for name, m in models.items():
        if m["source"] == "local" and not m["path"]:
            errors.append(f"models.{name}.path: required when source is 'local'")
        if m["source"] == "toy" and m["family"] in ("toy", "auto") and m["reference"] not in refs:
            errors.append(f"models.{name}.reference: unknown reference {m['reference']!r}")
        if m["source"] == "hub":
            for key in ("repo_id", "revision"):
                if not m["hub"][key]:
                    errors.append(f"models.{name}.hub.{key}: required when source is 'hub'")
        if m["source"] == "url":
            names = [f.get("name") or _url_basename(f["url"], "") for f in m["files"]]
            if not names:
                errors.append(f"models.{name}.files: required when source is 'url'")
            elif len(set(names)) < len(names) or not all(names):
                errors.append(f"models.{name}.files: every file needs a distinct name")
        if m["source"] in ("hub", "url") and not (m["n_layers"] or m["layers"]):
            errors.append(
                f"models.{name}.n_layers: required for a {m['source']} model (or list `layers`): "
                "the plan is made before the checkpoint is downloaded"
            )
    for name, m in models.items():
        if m["source"] == "toy" and m["family"] == "geneformer":
            ds = m["toy_cells"]["dataset"]
            if ds not in dsets or dsets[ds]["kind"] != "cells":
                errors.append(f"models.{name}.toy_cells.dataset: {ds!r} is not a cells dataset")
        elif m["source"] == "toy" and m["family"] not in ("toy", "auto"):
            errors.append(
                f"models.{name}.family: a toy model is the toy ESM (family toy or auto) "
                "or the toy Geneformer (family geneformer)"
            )
    for name, d in dsets.items():
        if d["pool"]:
            if d["kind"] != "cells":
                errors.append(
                    f"datasets.{name}.pool: only cells datasets pool (kind is {d['kind']!r})"
                )
            for src in d["pool"]:
                s = dsets.get(src)
                if s is None:
                    errors.append(f"datasets.{name}.pool: unknown dataset {src!r}")
                elif s["kind"] != "cells" or s["pool"]:
                    errors.append(
                        f"datasets.{name}.pool: {src!r} is not a cells dataset (or is a pool itself)"
                    )
                elif s["perturbed_cells_per_target"] and s["control_label"] != d["control_label"]:
                    errors.append(
                        f"datasets.{name}.control_label: {d['control_label']!r}, but its source {src!r} "
                        f"labels controls {s['control_label']!r}"
                    )
            if len(set(d["pool"])) < 2:
                errors.append(f"datasets.{name}.pool: name at least two distinct datasets")
    for name, d in dsets.items():
        if d["kind"] == "cells":
            if not (d["h5ad"] or d["builtin"] or d["url"] or d["pool"]):
                errors.append(f"datasets.{name}: kind 'cells' needs h5ad (a path), builtin or url")
            for gs in d["genesets"]:
                if gs == "pbmc68k_markers" and _builtins_of(name) & {
                    "pbmc68k_reduced",
                    "pbmc68k_crispri",
                    "pbmc68k_tissue",
                }:
                    continue
                if gs not in config["genesets"] or config["genesets"][gs]["source"] not in (
                    "enrichr",
                    "gmt",
                ):
                    errors.append(
                        f"datasets.{name}.genesets: {gs!r} is not a gene-set library "
                        "(a `genesets` entry with source enrichr or gmt)"
                    )
            for net in d["networks"]:
                if net == "pbmc68k_crispri_trrust" and "pbmc68k_crispri" in _builtins_of(name):
                    continue
                if net not in config["genesets"] or config["genesets"][net]["source"] not in (
                    "trrust",
                    "string",
                ):
                    errors.append(
                        f"datasets.{name}.networks: {net!r} is not a gene network "
                        "(a `genesets` entry with source trrust or string)"
                    )
            if (
                d["perturbed_cells_per_target"]
                and not d["pool"]
                and not (d["perturbation_column"] and d["control_label"])
            ):
                errors.append(
                    f"datasets.{name}.perturbed_cells_per_target: needs perturbation_column "
                    "and control_label"
                )
        elif d["kind"] == "task" and d["table"] and d["nt_task"]:
            errors.append(f"datasets.{name}: give table or nt_task, not both")
        elif d["kind"] == "task" and (d["table"] or d["nt_task"]):
            pass  # the table stands alone: no reference needed
        elif d["reference"] not in refs:
            errors.append(f"datasets.{name}.reference: unknown reference {d['reference']!r}")
        elif d["kind"] == "peaks":
            r = refs[d["reference"]]
            if r["source"] == "files" and not r["peaks"]:
                errors.append(
                    f"datasets.{name}: kind 'peaks' needs references.{d['reference']}.peaks"
                )
            if r["source"] == "download" and not (r["peaks"] or r["encode_peaks"]):
                errors.append(
                    f"datasets.{name}: kind 'peaks' needs references.{d['reference']}.encode_peaks "
                    "(or peaks)"
                )
        elif d["kind"] == "task" and refs[d["reference"]]["source"] != "toy":
            errors.append(
                f"datasets.{name}.table: required (or nt_task) for a task on a non-toy reference"
            )
    for name, g in config["genesets"].items():
        if g["source"] == "gmt" and not g["url"]:
            errors.append(f"genesets.{name}.url: required when source is 'gmt'")
    for i, run in enumerate(config["runs"]):
        if run["model"] not in models:
            errors.append(f"runs[{i}].model: unknown model {run['model']!r}")
        if run["dataset"] not in dsets:
            errors.append(f"runs[{i}].dataset: unknown dataset {run['dataset']!r}")
    if config["runs"] and not saes:
        errors.append("saes: at least one SAE recipe is needed")
    for name in list(models) + list(dsets) + list(saes) + list(refs) + list(config["genesets"]):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name == "datasets":
            errors.append(
                f"{name!r}: names may hold only letters, digits, '_', '.', '-' (and not be 'datasets')"
            )
    if errors:
        raise ValueError("invalid config:\n  " + "\n  ".join(errors))


_check_config()


def _expand_sweeps():
    """Replace each recipe that has a ``sweep`` by one recipe per grid point, named <name>-<key><value>-..."""
    import itertools

    import jsonschema
    import yaml

    with open(workflow.source_path("../schemas/config.schema.yaml")) as fh:
        recipe_schema = yaml.safe_load(fh)["definitions"]["sae"]
    expanded, errors = {}, []
    for name, recipe in config["saes"].items():
        grid = recipe.get("sweep") or {}
        if not grid:
            expanded[name] = {k: v for k, v in recipe.items() if k != "sweep"}
            continue
        for key in grid:
            if key == "sweep" or key not in recipe_schema["properties"]:
                errors.append(f"saes.{name}.sweep.{key}: not a recipe key")
        keys = sorted(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            point = {k: v for k, v in recipe.items() if k != "sweep"}
            point.update(zip(keys, values))
            label = "-".join(
                f"{k}_{v}" if k[-1].isdigit() else f"{k}{v}" for k, v in zip(keys, values)
            )
            for err in jsonschema.Draft202012Validator(recipe_schema).iter_errors(point):
                path = ".".join(map(str, err.absolute_path))
                errors.append(f"saes.{name}.sweep.{path}: {err.message}")
            if f"{name}-{label}" in config["saes"] or f"{name}-{label}" in expanded:
                errors.append(
                    f"saes.{name}.sweep: point {name}-{label} clashes with another recipe"
                )
            expanded[f"{name}-{label}"] = point
    if errors:
        raise ValueError("invalid config:\n  " + "\n  ".join(sorted(set(errors))))
    config["saes"] = expanded


_expand_sweeps()


def _run_saes():
    """Per run, the recipes to train (after sweep expansion); unknown names are config errors."""
    errors = []
    for i, run in enumerate(config["runs"]):
        names = []
        for want in run["saes"]:
            points = [n for n in config["saes"] if n == want or n.startswith(f"{want}-")]
            if not points:
                errors.append(f"runs[{i}].saes: unknown SAE recipe {want!r}")
            names += [n for n in points if n not in names]
        run["saes"] = names or list(config["saes"])
    if errors:
        raise ValueError("invalid config:\n  " + "\n  ".join(errors))


_run_saes()


COMPARE_PARTS = (
    "quality",
    "annotation",
    "probes",
    "head_scan",
    "organisation",
    "matching",
    "audit",
    "perturbation",
)


def _is_dna_evidence(run):
    return config["evidence"]["enabled"] and config["datasets"][run["dataset"]]["kind"] != "cells"


def _matching_rows(comp, a, b):
    """The shared rows of two runs' feature matching ('sequence', 'gene'), or None if not meaningful."""
    rows = comp["matching"]["rows"]
    same = a["dataset"] == b["dataset"]
    cells = all(config["datasets"][r["dataset"]]["kind"] == "cells" for r in (a, b))
    if rows == "sequence" or (rows == "auto" and same):
        return "sequence" if same else None
    return "gene" if cells else None


#: comparison name -> its config entry (resolved by _resolve_comparisons)
COMPARISONS = {}


def _resolve_comparisons():
    """Fill in each comparison run's SAE and the parts that apply; errors name the key."""
    errors = []
    seen = set()
    for c, comp in enumerate(config["comparisons"]):
        name = comp["name"]
        key = f"comparisons[{c}]"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            errors.append(f"{key}.name: names may hold only letters, digits, '_', '.', '-'")
        if name in seen:
            errors.append(f"{key}.name: another comparison is named {name!r}")
        seen.add(name)
        COMPARISONS[name] = comp
        runs = comp["runs"]
        for i, run in enumerate(runs):
            if run["model"] not in config["models"]:
                errors.append(f"{key}.runs[{i}].model: unknown model {run['model']!r}")
            if run["dataset"] not in config["datasets"]:
                errors.append(f"{key}.runs[{i}].dataset: unknown dataset {run['dataset']!r}")
            if not run["sae"]:
                listed = [
                    r["saes"]
                    for r in config["runs"]
                    if (r["model"], r["dataset"]) == (run["model"], run["dataset"])
                ]
                run["sae"] = (listed[0] if listed else list(config["saes"]))[0]
            elif run["sae"] not in config["saes"]:
                errors.append(f"{key}.runs[{i}].sae: unknown SAE recipe {run['sae']!r}")
        if errors:
            continue
        labels = [f"{r['model']}/{r['dataset']}/{r['sae']}" for r in runs]
        if len(set(labels)) < len(labels):
            errors.append(f"{key}.runs: a run is listed twice")
        for i, run in enumerate(runs):
            m = config["models"][run["model"]]
            if m["source"] in ("hub", "url") and not m["n_layers"]:
                errors.append(
                    f"models.{run['model']}.n_layers: required when the model is compared "
                    f"({key}.runs[{i}]): layers are aligned by relative depth layer / n_layers"
                )
        dna = [_is_dna_evidence(r) for r in runs]
        same_dataset = len({r["dataset"] for r in runs}) == 1
        pairs = [(a, b) for a in range(len(runs)) for b in range(a + 1, len(runs))]
        applies = {
            "quality": (True, ""),
            "annotation": (True, ""),
            "organisation": (True, ""),
            "probes": (
                all(dna) and same_dataset,
                "needs DNA runs (evidence enabled) on one dataset: the probes are paired on its test items",
            ),
            "head_scan": (all(dna), "needs DNA runs with evidence enabled"),
            "matching": (
                any(_matching_rows(comp, runs[a], runs[b]) for a, b in pairs),
                "needs runs on the same dataset (rows: sequence) or cell runs (rows: gene)",
            ),
            "audit": (True, ""),
            "perturbation": (
                all(has_perturbations(r["dataset"]) for r in runs),
                "needs cell runs with perturbed cells (perturbed_cells_per_target, or a pool of such a dataset)",
            ),
        }
        for j in comp["audit"]["runs"]:
            if j >= len(runs):
                errors.append(
                    f"{key}.audit.runs: {j} is not a position in runs (0..{len(runs) - 1})"
                )
            elif not dna[j] and "audit" in comp["compare"]:
                errors.append(f"{key}.audit.runs: runs[{j}] is not a DNA run with evidence")
        applies["audit"] = (
            bool(comp["audit"]["runs"])
            and all(dna[j] for j in comp["audit"]["runs"] if j < len(runs)),
            "needs DNA runs with evidence in audit.runs",
        )
        for part in comp["compare"]:
            ok, why = applies[part]
            if not ok:
                errors.append(f"{key}.compare: {part!r} {why}")
        comp["parts"] = [
            p
            for p in COMPARE_PARTS
            if (p in comp["compare"] or not comp["compare"]) and applies[p][0]
        ]
        comp["labels"] = labels
        # planned by `all` when one of its runs is run: a --configfile that replaces `runs` leaves
        # the default's toy comparison defined but unplanned (its targets can still be asked for)
        ran = {(r["model"], r["dataset"]) for r in config["runs"]}
        comp["active"] = any((r["model"], r["dataset"]) in ran for r in runs)
    if errors:
        raise ValueError("invalid config:\n  " + "\n  ".join(errors))


_resolve_comparisons()


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
        return f"resources/references/{name}/download/{_url_basename(ref['url'], 'genome.fa')}"
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


def get_encode_params(wildcards):
    """ENCODE file format, and the assembly of the (first) downloaded reference that uses it."""
    fmt = {ext: f for ext, f in ENCODE_FILES.values()}[wildcards.extension]
    assembly = ""
    for ref in config["references"].values():
        if ref["source"] == "download" and wildcards.accession in (
            ref["encode_peaks"],
            ref["encode_signal"],
        ):
            assembly = ref["assembly"]
            break
    return {"file_format": fmt, "assembly": assembly, **config["encode"]}


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


def get_geneset_gmts(wildcards):
    """The GMT files a cell dataset's features are tested against (name -> path)."""
    return {
        gs: (
            "resources/genesets/pbmc68k_markers.gmt"
            if gs == "pbmc68k_markers"
            else f"resources/genesets/{gs}.gmt"
        )
        for gs in get_dataset(wildcards)["genesets"]
    }


BUILTIN_NETWORKS = {"pbmc68k_crispri_trrust": "resources/genesets/pbmc68k_crispri_trrust.tsv"}


def is_trrust(net):
    """TRRUST networks are directed (TF -> target) and feed the regulatory-logic test."""
    return net in BUILTIN_NETWORKS or config["genesets"][net]["source"] == "trrust"


def get_network_tables(wildcards):
    """The edge tables (TRRUST / STRING) of a cell dataset (name -> path)."""
    return {
        f"net_{n}": BUILTIN_NETWORKS.get(n, f"resources/genesets/{n}.tsv")
        for n in get_dataset(wildcards)["networks"]
    }


def is_pool(dataset):
    return bool(config["datasets"][dataset]["pool"])


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


def get_perturbation_layer_dirs(wildcards):
    return expand(
        "results/{model}/{dataset}/perturbation/{sae}/layer{layer}",
        model=wildcards.model,
        dataset=wildcards.dataset,
        sae=wildcards.sae,
        layer=get_layers(wildcards.model),
    )


def get_cell_layer_dirs(wildcards):
    return expand(
        "results/{model}/{dataset}/cells/{sae}/layer{layer}",
        model=wildcards.model,
        dataset=wildcards.dataset,
        sae=wildcards.sae,
        layer=get_layers(wildcards.model),
    )


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


def get_layers(model):
    """Layers of a model, read cheaply: config for toy, hub and url models, the checkpoint's
    config.json (args.json for scGPT) for local ones."""
    m = config["models"][model]
    if m["layers"]:
        return list(m["layers"])
    if m["source"] == "toy":
        n = m["toy_cells" if m["family"] == "geneformer" else "toy"]["num_layers"]
    elif m["n_layers"]:
        n = m["n_layers"]
    else:
        n = _local_depth(model, os.path.join(m["path"], m["subfolder"]))
    return list(range(1, n + 1))


def get_n_layers(model):
    """Blocks of a model (the denominator of relative depth)."""
    m = config["models"][model]
    if m["source"] == "toy":
        return m["toy_cells" if m["family"] == "geneformer" else "toy"]["num_layers"]
    if m["n_layers"]:
        return m["n_layers"]
    if m["source"] == "local":
        return _local_depth(model, os.path.join(m["path"], m["subfolder"]))
    return max(get_layers(model))


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


# --- downloads ----------------------------------------------------------------------


def get_download_targets():
    """Everything the configured sources download (the `downloads` rule: run it where there is
    internet, e.g. on a cluster's login node, before the compute jobs)."""
    out = []
    for name, ref in config["references"].items():
        if ref["source"] == "download":
            out.append(_raw_fasta(name))
            out += [f for f in (_ref_file(name, "peaks"), _ref_file(name, "signal")) if f]
    for name, d in config["datasets"].items():
        if d["kind"] == "task" and d["nt_task"] and not d["table"]:
            out.append(f"resources/nt_benchmark/{d['nt_task']}/task.parquet")
        if d["kind"] == "cells" and not (d["h5ad"] or d["builtin"] or d["pool"]):
            out.append(f"resources/cells/{name}.h5ad")
    for name, g in config["genesets"].items():
        out.append(
            f"resources/genesets/{name}.{'gmt' if g['source'] in ('enrichr', 'gmt') else 'tsv'}"
        )
    out += [f"resources/models/{m}" for m in _models_from("hub", "url")]
    return sorted(set(out))


# --- targets ----------------------------------------------------------------------


def get_sae_dirs(wildcards):
    return expand(
        "results/{model}/{dataset}/sae/{sae}/layer{layer}",
        model=wildcards.model,
        dataset=wildcards.dataset,
        sae=wildcards.sae,
        layer=get_layers(wildcards.model),
    )


def get_catalog_dirs(wildcards):
    return expand(
        "results/{model}/{dataset}/catalog/{sae}/layer{layer}",
        model=wildcards.model,
        dataset=wildcards.dataset,
        sae=wildcards.sae,
        layer=get_layers(wildcards.model),
    )


def get_eval_files(wildcards):
    return expand(
        "results/{model}/{dataset}/eval/{sae}/layer{layer}.json",
        model=wildcards.model,
        dataset=wildcards.dataset,
        sae=wildcards.sae,
        layer=get_layers(wildcards.model),
    )


def get_recovery_tables(wildcards):
    return expand(
        "results/{model}/{dataset}/recovery/{sae}/layer{layer}.tsv",
        model=wildcards.model,
        dataset=wildcards.dataset,
        sae=wildcards.sae,
        layer=get_layers(wildcards.model),
    )


def has_evidence(dataset):
    """The DNA evidence rules run on every DNA run (peaks or task datasets) unless disabled."""
    return config["evidence"]["enabled"] and config["datasets"][dataset]["kind"] != "cells"


def get_evidence_tables(wildcards):
    layer_files = lambda name: expand(
        "results/{model}/{dataset}/evidence/{sae}/layer{layer}/{name}",
        model=wildcards.model,
        dataset=wildcards.dataset,
        sae=wildcards.sae,
        layer=get_layers(wildcards.model),
        name=name,
    )
    return {
        "ablation": layer_files("ablation.tsv"),
        "differential": layer_files("differential.tsv"),
    }


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


# --- comparisons (config `comparisons:`; rules in compare.smk) --------------------------


def _run_base(run):
    return f"results/{run['model']}/{run['dataset']}"


def _run_layer_paths(run, stage, name=""):
    """Per layer of a run: results/{model}/{dataset}/{stage}/{sae}/layer{L}[/name]."""
    base, sae = _run_base(run), run["sae"]
    return [
        (
            os.path.join(f"{base}/{stage}/{sae}/layer{l}", name)
            if name
            else f"{base}/{stage}/{sae}/layer{l}"
        )
        for l in get_layers(run["model"])
    ]


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


# --- atlas ------------------------------------------------------------------------


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

"""The workflow config, resolved: the checks the JSON schema cannot express, SAE sweep expansion and
comparison resolution, as plain functions of the (schema-validated, defaults-filled) config dict.

workflow/rules/common.smk validates the config against workflow/schemas/config.schema.yaml and
then calls :func:`resolve` once. Every error names the offending key. Import-light (stdlib,
jsonschema): every SLURM job re-parses the workflow.
"""

from __future__ import annotations

import copy
import itertools
import os
import re
from urllib.parse import unquote, urlsplit

NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"

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


def _fail(errors, sort=False):
    if errors:
        errors = sorted(set(errors)) if sort else errors
        raise ValueError("invalid config:\n  " + "\n  ".join(errors))


def schema_problems(config: dict, schema: dict) -> list[str]:
    """Every schema violation of ``config``, as 'dotted.key: message', sorted by key."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'.'.join(map(str, err.absolute_path)) or '<top level>'}: {err.message}"
        for err in sorted(
            validator.iter_errors(config), key=lambda er: list(map(str, er.absolute_path))
        )
    ]


def check_schema(config: dict, schema: dict) -> None:
    """Raise naming every offending key in one short message (nothing if the config is valid)."""
    problems = schema_problems(config, schema)
    if problems:
        raise ValueError("invalid config (see config/README.md):\n  " + "\n  ".join(problems))


def url_basename(url: str, default: str = "download") -> str:
    """The last path component of a URL (no query), safe as a file name."""
    name = os.path.basename(unquote(urlsplit(url).path).rstrip(os.sep))
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return name or default


def builtins_of(config: dict, dataset: str) -> set:
    """The builtin datasets a cells dataset is (or pools)."""
    d = config["datasets"][dataset]
    srcs = [config["datasets"].get(s, {}) for s in d.get("pool") or []] or [d]
    return {s.get("builtin") for s in srcs} - {"", None}


def has_perturbations(config: dict, dataset: str) -> bool:
    d = config["datasets"][dataset]
    if d["kind"] == "cells" and d["pool"]:
        return any(has_perturbations(config, s) for s in d["pool"])
    return d["kind"] == "cells" and d["perturbed_cells_per_target"] > 0


def has_evidence(config: dict, dataset: str) -> bool:
    """The DNA evidence rules run on every DNA run (peaks or task datasets) unless disabled."""
    return config["evidence"]["enabled"] and config["datasets"][dataset]["kind"] != "cells"


def matching_rows(config: dict, comp: dict, a: dict, b: dict) -> str | None:
    """The shared rows of two runs' feature matching ('sequence', 'gene'), or None if not
    meaningful."""
    rows = comp["matching"]["rows"]
    same = a["dataset"] == b["dataset"]
    cells = all(config["datasets"][r["dataset"]]["kind"] == "cells" for r in (a, b))
    if rows == "sequence" or (rows == "auto" and same):
        return "sequence" if same else None
    return "gene" if cells else None


def check(config: dict) -> None:
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
            names = [f.get("name") or url_basename(f["url"], "") for f in m["files"]]
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
    errors += _check_pools(dsets)
    errors += _check_datasets(config)
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
        if not re.fullmatch(NAME, name) or name == "datasets":
            errors.append(
                f"{name!r}: names may hold only letters, digits, '_', '.', '-' "
                "(and not be 'datasets')"
            )
    _fail(errors)


def _check_pools(dsets: dict) -> list[str]:
    errors = []
    for name, d in dsets.items():
        if not d["pool"]:
            continue
        if d["kind"] != "cells":
            errors.append(f"datasets.{name}.pool: only cells datasets pool (kind is {d['kind']!r})")
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
                    f"datasets.{name}.control_label: {d['control_label']!r}, but its source "
                    f"{src!r} labels controls {s['control_label']!r}"
                )
        if len(set(d["pool"])) < 2:
            errors.append(f"datasets.{name}.pool: name at least two distinct datasets")
    return errors


def _check_datasets(config: dict) -> list[str]:
    errors = []
    refs, genesets = config["references"], config["genesets"]
    for name, d in config["datasets"].items():
        if d["kind"] == "cells":
            if not (d["h5ad"] or d["builtin"] or d["url"] or d["pool"]):
                errors.append(f"datasets.{name}: kind 'cells' needs h5ad (a path), builtin or url")
            for gs in d["genesets"]:
                if gs == "pbmc68k_markers" and builtins_of(config, name) & {
                    "pbmc68k_reduced",
                    "pbmc68k_crispri",
                    "pbmc68k_tissue",
                }:
                    continue
                if gs not in genesets or genesets[gs]["source"] not in ("enrichr", "gmt"):
                    errors.append(
                        f"datasets.{name}.genesets: {gs!r} is not a gene-set library "
                        "(a `genesets` entry with source enrichr or gmt)"
                    )
            for net in d["networks"]:
                if net == "pbmc68k_crispri_trrust" and "pbmc68k_crispri" in builtins_of(
                    config, name
                ):
                    continue
                if net not in genesets or genesets[net]["source"] not in ("trrust", "string"):
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
                    f"datasets.{name}: kind 'peaks' needs "
                    f"references.{d['reference']}.encode_peaks (or peaks)"
                )
        elif d["kind"] == "task" and refs[d["reference"]]["source"] != "toy":
            errors.append(
                f"datasets.{name}.table: required (or nt_task) for a task on a non-toy reference"
            )
    return errors


def expand_sweeps(saes: dict, recipe_schema: dict) -> dict:
    """Each recipe that has a ``sweep`` becomes one recipe per grid point, named
    <name>-<key><value>-... (<key>_<value> where the key ends in a digit); the others lose their
    empty ``sweep``. ``recipe_schema`` is the schema's definitions.sae: every point must pass it."""
    import jsonschema

    expanded, errors = {}, []
    for name, recipe in saes.items():
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
            if f"{name}-{label}" in saes or f"{name}-{label}" in expanded:
                errors.append(
                    f"saes.{name}.sweep: point {name}-{label} clashes with another recipe"
                )
            expanded[f"{name}-{label}"] = point
    _fail(errors, sort=True)
    return expanded


def run_saes(runs: list, saes: dict) -> list[list[str]]:
    """Per run, the recipes it trains (of the expanded ``saes``): each name it lists and that
    name's sweep points; all recipes when it lists none. Unknown names are config errors."""
    errors, out = [], []
    for i, run in enumerate(runs):
        names = []
        for want in run["saes"]:
            points = [n for n in saes if n == want or n.startswith(f"{want}-")]
            if not points:
                errors.append(f"runs[{i}].saes: unknown SAE recipe {want!r}")
            names += [n for n in points if n not in names]
        out.append(names or list(saes))
    _fail(errors)
    return out


def resolve_comparisons(config: dict) -> None:
    """Fill in each comparison's runs' SAE, its ``parts`` (those that apply), ``labels`` and
    ``active`` (in place; ``config`` has its runs' SAEs resolved); errors name the key."""
    errors = []
    seen = set()
    for c, comp in enumerate(config["comparisons"]):
        name = comp["name"]
        key = f"comparisons[{c}]"
        if not re.fullmatch(NAME, name):
            errors.append(f"{key}.name: names may hold only letters, digits, '_', '.', '-'")
        if name in seen:
            errors.append(f"{key}.name: another comparison is named {name!r}")
        seen.add(name)
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
        errors += _resolve_parts(config, comp, key)
    _fail(errors)


def _resolve_parts(config: dict, comp: dict, key: str) -> list[str]:
    errors = []
    runs = comp["runs"]
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
    dna = [has_evidence(config, r["dataset"]) for r in runs]
    same_dataset = len({r["dataset"] for r in runs}) == 1
    pairs = [(a, b) for a in range(len(runs)) for b in range(a + 1, len(runs))]
    applies = {
        "quality": (True, ""),
        "annotation": (True, ""),
        "organisation": (True, ""),
        "probes": (
            all(dna) and same_dataset,
            "needs DNA runs (evidence enabled) on one dataset: the probes are paired on its "
            "test items",
        ),
        "head_scan": (all(dna), "needs DNA runs with evidence enabled"),
        "matching": (
            any(matching_rows(config, comp, runs[a], runs[b]) for a, b in pairs),
            "needs runs on the same dataset (rows: sequence) or cell runs (rows: gene)",
        ),
        "perturbation": (
            all(has_perturbations(config, r["dataset"]) for r in runs),
            "needs cell runs with perturbed cells (perturbed_cells_per_target, or a pool of "
            "such a dataset)",
        ),
    }
    for j in comp["audit"]["runs"]:
        if j >= len(runs):
            errors.append(f"{key}.audit.runs: {j} is not a position in runs (0..{len(runs) - 1})")
        elif not dna[j] and "audit" in comp["compare"]:
            errors.append(f"{key}.audit.runs: runs[{j}] is not a DNA run with evidence")
    applies["audit"] = (
        bool(comp["audit"]["runs"]) and all(dna[j] for j in comp["audit"]["runs"] if j < len(runs)),
        "needs DNA runs with evidence in audit.runs",
    )
    for part in comp["compare"]:
        ok, why = applies[part]
        if not ok:
            errors.append(f"{key}.compare: {part!r} {why}")
    comp["parts"] = [
        p for p in COMPARE_PARTS if (p in comp["compare"] or not comp["compare"]) and applies[p][0]
    ]
    comp["labels"] = labels
    # planned by `all` when one of its runs is run: a --configfile that replaces `runs` leaves
    # the default's toy comparison defined but unplanned (its targets can still be asked for)
    ran = {(r["model"], r["dataset"]) for r in config["runs"]}
    comp["active"] = any((r["model"], r["dataset"]) in ran for r in runs)
    return errors


def resolve(config: dict, schema: dict) -> dict:
    """The resolved copy of a schema-validated config: cross-references checked, SAE sweeps
    expanded (``saes``), each run's ``saes`` listed, comparisons resolved. Raises ValueError
    naming the offending keys."""
    config = copy.deepcopy(config)
    check(config)
    config["saes"] = expand_sweeps(config["saes"], schema["definitions"]["sae"])
    for run, names in zip(config["runs"], run_saes(config["runs"], config["saes"])):
        run["saes"] = names
    resolve_comparisons(config)
    return config

"""saeflow.config in-process: the config errors a dry run would stop on (same messages), SAE sweep
expansion and comparison resolution. The config is validated (defaults filled) by Snakemake's
``validate``, as workflow/rules/common.smk does; two end-to-end dry runs in test_workflow.py prove
that wiring."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from snakemake.utils import update_config, validate
from wfutil import REPO, load_test_config

from saeflow import config as sc
from tests.workflow.test_download_rules import download_config, dummy_sources

SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = yaml.load(SCHEMA_PATH.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@pytest.fixture(scope="module", autouse=True)
def _schema_as_json(tmp_path_factory):
    """validate() parses its schema file on every call: JSON is 100x faster to parse than YAML."""
    global SCHEMA_PATH
    SCHEMA_PATH = tmp_path_factory.mktemp("schema") / "config.schema.json"
    SCHEMA_PATH.write_text(json.dumps(SCHEMA))


def validated(cfg: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    validate(cfg, str(SCHEMA_PATH))
    return cfg


def resolved(cfg: dict) -> dict:
    return sc.resolve(validated(cfg), SCHEMA)


def config_error(cfg: dict) -> str:
    """The message the workflow stops with (common.smk's _resolve_config, in-process)."""
    cfg = copy.deepcopy(cfg)
    with pytest.raises(ValueError) as e:
        try:
            validate(cfg, str(SCHEMA_PATH))
        except Exception:
            sc.check_schema(cfg, SCHEMA)
            raise
        sc.resolve(cfg, SCHEMA)
    return str(e.value)


# --------------------------------------------------------------------------- errors name the key


@pytest.mark.parametrize(
    "mutate,key,problem",
    [
        (lambda c: c["catalog"].update(topn=5), "catalog", "'topn' was unexpected"),
        (
            lambda c: c["saes"]["topk_x4_k16"].update(k="eight"),
            "saes.topk_x4_k16.k",
            "is not of type 'integer'",
        ),
        (
            lambda c: c.update(runs=[{"model": "nope", "dataset": "ctcf_peaks"}]),
            "runs[0].model",
            "unknown model",
        ),
        (lambda c: c["saes"]["jr"]["sweep"].update(kk=[1]), "saes.jr.sweep.kk", "not a recipe key"),
        (
            lambda c: c["saes"]["jr"]["sweep"].update(k=[4, "x"]),
            "saes.jr.sweep.k",
            "is not of type 'integer'",
        ),
        (lambda c: c["saes"]["jr"].update(arch="gated"), "saes.jr.arch", "is not one of"),
    ],
)
def test_bad_config_fails_naming_the_key(mutate, key, problem):
    cfg = load_test_config()
    mutate(cfg)
    msg = config_error(cfg)
    assert f"{key}:" in msg and problem in msg, msg


@pytest.mark.parametrize(
    "mutate,message",
    [
        (
            lambda c: c["comparisons"][0]["runs"][1].update(model="nope"),
            "comparisons[0].runs[1].model: unknown model 'nope'",
        ),
        (
            lambda c: c["comparisons"].append(dict(c["comparisons"][0])),
            "comparisons[2].name: another comparison is named 'toy_sizes'",
        ),  # the test config has two
        (
            lambda c: c["comparisons"][0]["runs"][0].update(sae="topk_x9"),
            "comparisons[0].runs[0].sae: unknown SAE recipe 'topk_x9'",
        ),
        (
            lambda c: (
                c["comparisons"][0]["runs"][1].update(dataset="promoter_tata")
                or c["comparisons"][0].update(compare=["probes"])
            ),
            "comparisons[0].compare: 'probes' needs DNA runs (evidence enabled) on one dataset",
        ),
        (
            lambda c: c["comparisons"][0].update(audit={"runs": [2]}),
            "comparisons[0].audit.runs: 2 is not a position in runs",
        ),
        (
            lambda c: c["comparisons"][0].update(runs=c["comparisons"][0]["runs"][:1]),
            "comparisons.0.runs: ",
        ),
    ],
)
def test_bad_comparison_fails_naming_the_key(mutate, message):
    cfg = load_test_config()
    mutate(cfg)
    assert message in config_error(cfg)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (
            lambda d: d["pbmc_pooled"].update(pool=["pbmc", "nope"]),
            "datasets.pbmc_pooled.pool: unknown dataset 'nope'",
        ),
        (
            lambda d: d["pbmc_pooled"].update(pool=["pbmc", "ctcf_peaks"]),
            "datasets.pbmc_pooled.pool: 'ctcf_peaks' is not a cells dataset",
        ),
        (
            lambda d: d["pbmc_pooled"].update(pool=["pbmc"]),
            "datasets.pbmc_pooled.pool: name at least two",
        ),
        (
            lambda d: d["pbmc_pooled"].update(control_label="NTC"),
            "datasets.pbmc_pooled.control_label: 'NTC', but its source 'pbmc' labels controls "
            "'non-targeting'",
        ),
    ],
)
def test_bad_pool_fails_naming_the_key(mutate, message):
    cfg = load_test_config()
    mutate(cfg["datasets"])
    assert message in config_error(cfg)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (
            lambda c: c["models"]["tiny"].update(n_layers=0),
            "models.tiny.n_layers: required for a hub model",
        ),
        (
            lambda c: c["models"]["tiny"]["hub"].update(revision=""),
            "models.tiny.hub.revision: required",
        ),
        (
            lambda c: c["datasets"]["replogle"].update(url=""),
            "datasets.replogle: kind 'cells' needs h5ad",
        ),
        (
            lambda c: c["datasets"]["promoter_tata"].update(table="t.tsv"),
            "give table or nt_task, not both",
        ),
        (
            lambda c: c["references"]["grch38"].update(encode_peaks=""),
            "needs references.grch38.encode_peaks",
        ),
        (lambda c: c["genesets"]["hallmark"].update(url=""), "genesets.hallmark.url: required"),
        (
            lambda c: c["references"]["grch38"].update(encode_peaks="ENC123"),
            "references.grch38.encode_peaks:",
        ),
    ],
)
def test_bad_download_config_fails_naming_the_key(mutate, message):
    cfg = download_config(dummy_sources(), "http://127.0.0.1:9")
    resolved(cfg)  # the unmutated config is fine: the error is the mutation's
    mutate(cfg)
    assert message in config_error(cfg)


def test_a_run_naming_an_unknown_recipe_fails_naming_it():
    """An example given with --configfile: it is merged over config/config.yaml."""
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg = yaml.safe_load((REPO / "config" / "examples" / "geneformer_k562.yaml").read_text())
    merged = copy.deepcopy(default)
    update_config(merged, cfg)
    resolved(merged)
    cfg["runs"][0]["saes"] = ["topk_x4_k23"]
    update_config(default, cfg)
    msg = config_error(default)
    assert "runs[0].saes: unknown SAE recipe 'topk_x4_k23'" in msg


def test_every_error_is_reported_at_once():
    cfg = load_test_config()
    cfg["runs"].append({"model": "nope", "dataset": "gone"})
    cfg.setdefault("genesets", {})["bad name"] = {"source": "enrichr"}
    msg = config_error(cfg)
    assert msg.startswith("invalid config:\n  ")
    assert "runs[3].model: unknown model 'nope'" in msg
    assert "runs[3].dataset: unknown dataset 'gone'" in msg
    assert "'bad name': names may hold only letters" in msg


def test_resolve_leaves_its_input_alone():
    cfg = validated(load_test_config())
    before = copy.deepcopy(cfg)
    sc.resolve(cfg, SCHEMA)
    assert cfg == before


# --------------------------------------------------------------------------- sweeps


def _recipe(**kw):
    return dict(arch="topk", expansion=4, k=16, **kw)


def test_sweep_expands_to_one_recipe_per_grid_point():
    recipe_schema = SCHEMA["definitions"]["sae"]
    saes = {
        "plain": _recipe(sweep={}),
        "grid": _recipe(sweep={"k": [8, 32], "expansion": [2]}),
        "l0": dict(arch="jumprelu", expansion=2, sweep={"target_l0": [8, 16]}),
    }
    out = sc.expand_sweeps(saes, recipe_schema)
    # keys sorted; <key><value>, or <key>_<value> where the key ends in a digit
    assert list(out) == [
        "plain",
        "grid-expansion2-k8",
        "grid-expansion2-k32",
        "l0-target_l0_8",
        "l0-target_l0_16",
    ]
    assert out["plain"] == _recipe()
    assert out["grid-expansion2-k32"] == dict(arch="topk", expansion=2, k=32)
    assert out["l0-target_l0_16"] == dict(arch="jumprelu", expansion=2, target_l0=16)
    assert "sweep" in saes["grid"]  # the input is not changed


def test_sweep_point_clashing_with_a_recipe_is_an_error():
    saes = {"a": _recipe(sweep={"k": [8]}), "a-k8": _recipe()}
    with pytest.raises(ValueError, match=r"saes\.a\.sweep: point a-k8 clashes with another recipe"):
        sc.expand_sweeps(saes, SCHEMA["definitions"]["sae"])


def test_runs_train_the_points_of_the_recipes_they_name():
    saes = {"topk": {}, "jr-k8": {}, "jr-k16": {}, "jrx": {}}
    runs = [{"saes": ["jr"]}, {"saes": []}, {"saes": ["topk", "jr-k8", "jr"]}]
    assert sc.run_saes(runs, saes) == [
        ["jr-k8", "jr-k16"],  # jr's points; not jrx (no '-' after the name)
        ["topk", "jr-k8", "jr-k16", "jrx"],  # none named: every recipe
        ["topk", "jr-k8", "jr-k16"],  # each once, in order
    ]


def test_the_test_config_resolves_its_sweep_into_the_runs():
    cfg = resolved(load_test_config())
    assert list(cfg["saes"]) == ["topk_x4_k16", "jr-target_l0_8"]
    assert cfg["saes"]["jr-target_l0_8"]["target_l0"] == 8
    assert "sweep" not in cfg["saes"]["jr-target_l0_8"]
    assert [r["saes"] for r in cfg["runs"]] == [
        ["topk_x4_k16", "jr-target_l0_8"],
        ["topk_x4_k16"],
        ["topk_x4_k16"],
    ]


# --------------------------------------------------------------------------- comparisons


def test_the_test_config_comparisons_resolve():
    comps = {c["name"]: c for c in resolved(load_test_config())["comparisons"]}
    sizes = comps["toy_sizes"]
    assert sizes["parts"] == [
        "quality",
        "annotation",
        "probes",
        "head_scan",
        "organisation",
        "matching",
        "audit",
    ]
    assert sizes["labels"] == [
        "toy_esm/ctcf_peaks/topk_x4_k16",
        "toy_esm_small/ctcf_peaks/topk_x4_k16",
    ]
    assert sizes["active"]  # toy_esm on ctcf_peaks is run
    pooled = comps["pooled_vs_single"]
    assert pooled["parts"] == ["quality", "annotation", "perturbation"]  # as listed in `compare`


def test_comparison_parts_follow_the_runs():
    cfg = load_test_config()
    cfg["comparisons"][0]["runs"][1]["dataset"] = "promoter_tata"
    cfg["runs"] = [r for r in cfg["runs"] if r["model"] != "toy_esm"]
    comp = resolved(cfg)["comparisons"][0]
    # two datasets: no paired probes, no per-sequence matching
    assert comp["parts"] == ["quality", "annotation", "head_scan", "organisation", "audit"]
    assert not comp["active"]  # neither of its runs is in `runs`


def test_a_comparison_run_without_sae_takes_its_runs_first_recipe():
    cfg = load_test_config()
    cfg["comparisons"][0]["runs"][0]["sae"] = ""  # toy_esm on ctcf_peaks: runs[0], jr sweep too
    cfg["comparisons"][0]["runs"][1]["sae"] = ""  # toy_esm_small: in no run, the first recipe
    cfg["runs"][0]["saes"] = ["jr"]
    runs = resolved(cfg)["comparisons"][0]["runs"]
    assert [r["sae"] for r in runs] == ["jr-target_l0_8", "topk_x4_k16"]


@pytest.mark.parametrize(
    "rows,a,b,want",
    [
        ("auto", "ctcf_peaks", "ctcf_peaks", "sequence"),
        ("auto", "ctcf_peaks", "promoter_tata", None),
        ("auto", "pbmc", "pbmc_pooled", "gene"),
        ("sequence", "pbmc", "pbmc_pooled", None),
        ("gene", "pbmc", "pbmc", "gene"),
        ("gene", "ctcf_peaks", "ctcf_peaks", None),
    ],
)
def test_matching_rows(rows, a, b, want):
    cfg = validated(load_test_config())
    comp = {"matching": {"rows": rows}}
    assert sc.matching_rows(cfg, comp, {"dataset": a}, {"dataset": b}) == want


def test_perturbations_of_a_pool_are_those_of_its_sources():
    cfg = validated(load_test_config())
    assert sc.has_perturbations(cfg, "pbmc") and sc.has_perturbations(cfg, "pbmc_pooled")
    assert not sc.has_perturbations(cfg, "ctcf_peaks")
    assert sc.has_evidence(cfg, "ctcf_peaks") and not sc.has_evidence(cfg, "pbmc")
    cfg["evidence"]["enabled"] = False
    assert not sc.has_evidence(cfg, "ctcf_peaks")


def test_url_basename():
    assert sc.url_basename("https://x.org/a/b/best_model.pt?download=1") == "best_model.pt"
    assert sc.url_basename("https://x.org/a/weird name(1).fa.gz") == "weird_name_1_.fa.gz"
    assert sc.url_basename("https://x.org/", "genome.fa") == "genome.fa"

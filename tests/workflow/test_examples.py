"""The example configs plan cleanly (``snakemake -n --configfile``): real models and data, and
the offline toy ones.

Nothing is downloaded: the plan is made before any checkpoint or dataset exists, so each
example must carry its layer count and every source in config. The job counts are what a user
would expect from the file: one SAE per (run, recipe, layer), the downloads it needs, and the
cell preparation for the single-cell examples.
"""

from __future__ import annotations

import pytest
import yaml
from wfutil import REPO, copy_workflow, planned_jobs, smk

EXAMPLES = {
    # name: (layers, runs x recipes, rules that must be planned)
    # the toy genome and LM (offline): the four architectures on every layer
    "toy_sae_architectures": (
        4,
        1 * 4,
        {"build_toy_genome", "train_toy_model", "feature_catalog", "ground_truth_recovery"},
    ),
    "dnabert2_ctcf": (
        12,
        5 * 3,
        {
            "download_hub_model",
            "download_fasta",
            "download_encode",
            "download_nt_task",
            "index_fasta",
            "prepare_sequences",
            "feature_catalog",
        },
    ),
    "nt_v2_ctcf": (
        12,
        2 * 2,
        {"download_hub_model", "download_fasta", "download_encode", "download_nt_task"},
    ),
    "geneformer_k562": (18, 1, {"download_hub_model", "download_cells", "prepare_cells"}),
    "scgpt_k562": (12, 1, {"download_cells", "prepare_cells"}),
    # comparisons: two models of different tokenisers on one dataset (train_sae: 12 + 12, 18 + 12
    # layers)
    "dnabert2_vs_nt_ctcf": (
        12,
        2,
        {
            "download_hub_model",
            "download_encode",
            "compare_quality",
            "compare_annotation",
            "compare_organisation",
            "compare_probes",
            "compare_head_scan",
            "compare_matching",
            "ov_audit",
        },
    ),
    # pooled vs single source: K562 alone and K562 + Tabula Sapiens blood (downloaded, unzipped,
    # pooled)
    "geneformer_k562_pooled_ts": (
        18,
        2,
        {
            "download_hub_model",
            "download_cells",
            "prepare_cells",
            "pool_cells",
            "perturbation_response",
            "compare_perturbation",
        },
    ),
    "geneformer_vs_scgpt_k562": (
        (18 + 12) / 2,
        2,
        {
            "download_hub_model",
            "compare_quality",
            "compare_annotation",
            "compare_organisation",
            "compare_matching",
        },
    ),
}


@pytest.fixture(scope="module")
def wd(tmp_path_factory):
    wd = copy_workflow(tmp_path_factory.mktemp("examples"))
    # scGPT whole-human has no stable URL: its examples read a local folder the user fills
    scgpt = wd / "resources" / "scgpt_human"
    scgpt.mkdir(parents=True)
    for name in ("best_model.pt", "vocab.json", "args.json"):
        (scgpt / name).write_text("")
    return wd


def test_no_example_holds_a_placeholder_url():
    for p in (REPO / "config" / "examples").glob("*.yaml"):
        text = p.read_text()
        assert "FILE_ID" not in text and "<FILE_ID>" not in text, p.name


def test_every_example_is_tested():
    assert {p.stem for p in (REPO / "config" / "examples").glob("*.yaml")} == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_config_plans(wd, name):
    layers, sae_runs, rules = EXAMPLES[name]
    cfg = yaml.safe_load((REPO / "config" / "examples" / f"{name}.yaml").read_text())
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    datasets = {**default["datasets"], **cfg.get("datasets", {})}  # merged over the default
    p = smk(wd, "-n", "--configfile", f"config/examples/{name}.yaml", timeout=300)
    jobs = planned_jobs(p)
    assert jobs["train_sae"] == layers * sae_runs, jobs
    assert jobs["evaluate_sae"] == layers * sae_runs
    assert rules <= set(jobs), rules - set(jobs)
    # the toy run (and comparison) was replaced, except in the examples of toy models
    models = cfg.get("models", {})
    toy = any(
        (models.get(r["model"], {}).get("source") or default["models"][r["model"]]["source"])
        == "toy"
        for r in cfg["runs"]
    )
    assert ("train_toy_model" in jobs) == toy and ("build_toy_genome" in jobs) == toy
    if toy:
        assert jobs["train_toy_model"] == 1  # toy_esm only: the comparison's small LM is not
    cells = any(datasets[r["dataset"]].get("kind") == "cells" for r in cfg["runs"])
    names = [c["name"] for c in cfg.get("comparisons", [])]
    assert ("compare_quality" in jobs) == bool(names) and jobs.get("compare_quality", 0) == len(
        names
    )
    if not cells:
        assert ("compare_probes" in jobs) == bool(names)
    else:
        assert "compare_probes" not in jobs and "ov_audit" not in jobs  # DNA-only parts
    # the default's one thread per job is for its toy jobs, not the real models'
    assert cfg.get("threads", 1) >= 2 or toy
    assert ("feature_catalog" in jobs) != cells  # cells: no base-level catalog
    shards = sum(datasets[r["dataset"]].get("shards", 1) for r in cfg["runs"])
    assert jobs["extract_activations"] == shards


def test_a_run_naming_an_unknown_recipe_fails_naming_it(wd, tmp_path):
    cfg = yaml.safe_load((REPO / "config" / "examples" / "geneformer_k562.yaml").read_text())
    cfg["runs"][0]["saes"] = ["topk_x4_k23"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    p = smk(wd, "-n", "--configfile", str(bad), check=False, timeout=300)
    assert p.returncode != 0
    assert "runs[0].saes: unknown SAE recipe 'topk_x4_k23'" in p.stdout + p.stderr

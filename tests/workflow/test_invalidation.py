"""A config change reaches every output below it even when a failed job removed an intermediate.

The path a user met on SLURM: after a complete run a value of the config changed; the next run's
first job (the one whose params hold the value) failed, and Snakemake removed that job's outputs;
the run after that said "Nothing to be done", since Snakemake does not regenerate a missing
intermediate whose consumers look up to date (snakemake PR #2966) and no consumer knew of the
value. Every rule below therefore carries a fingerprint of the config that defines its inputs
(workflow/rules/provenance.smk).

The failure is a real job failure: the failing rule's script in the workflow copy is replaced by
one that raises, so Snakemake itself removes that job's outputs exactly as after the cluster
rejected it; the script is restored before the dry run, so the config change is the only
difference Snakemake sees.
"""

from __future__ import annotations

import copy
import shutil

import pytest
import yaml
from wfutil import copy_workflow, planned_jobs, smk

# One tiny toy DNA model (one block), one peaks dataset, one SAE; no evidence, no comparisons.
TINY = {
    "references": {
        "toy": {
            "source": "toy",
            "toy": {
                "n_chromosomes": 1,
                "chromosome_length": 20000,
                "peak_halfwidth": 100,
                "motifs": [{"jaspar_id": "MA0139.1", "count": 60, "peaks": True}],
            },
        }
    },
    "models": {
        "tiny": {
            "source": "toy",
            "reference": "toy",
            "toy": {
                "hidden_size": 16,
                "num_layers": 1,
                "num_heads": 2,
                "intermediate_size": 32,
                "seq_len": 32,
                "steps": 20,
                "batch_size": 8,
                "eval_windows": 10,
                "checkpoint_every": 0,
            },
            "batch_size": 32,
        }
    },
    "datasets": {"peaks": {"reference": "toy", "kind": "peaks", "window": 32}},
    "runs": [{"model": "tiny", "dataset": "peaks"}],
    "saes": {
        "s": {
            "arch": "topk",
            "expansion": 2,
            "k": 4,
            "epochs": 1,
            "batch_size": 64,
            "checkpoint_every": 0,
            "device": "cpu",
        }
    },
    "catalog": {"svd_sample": 100, "svd_components": 4},
    "evaluate": {"max_sequences": 20},
    "evidence": {"enabled": False},
    "comparisons": [],
    "threads": 1,  # two jobs at a time on two cores
}

SAE_LEVEL = {
    "train_sae",
    "plot_training_curves",
    "evaluate_sae",
    "eval_summary",
    "feature_catalog",
    "catalog_summary",
    "ground_truth_recovery",
    "recovery_summary",
    "atlas",
    "all",
}
ACTIVATIONS = {"extract_activations", "merge_activations"}

# (config path, new value, the rule that fails, what must be replanned, what must not)
CASES = {
    "sae_recipe": (
        ("saes", "s", "k"),
        2,
        "train_sae",
        SAE_LEVEL,
        {"train_toy_model", "prepare_sequences", *ACTIVATIONS},
    ),
    "model_setting": (
        ("models", "tiny", "toy", "steps"),
        10,
        "train_toy_model",
        {"train_toy_model", "toy_lm_metrics", *ACTIVATIONS, *SAE_LEVEL},
        {"build_toy_genome", "index_fasta", "prepare_sequences"},
    ),
    "dataset_setting": (
        ("datasets", "peaks", "window"),
        24,
        "prepare_sequences",
        {"prepare_sequences", *ACTIVATIONS, *SAE_LEVEL},
        {"build_toy_genome", "index_fasta", "train_toy_model", "toy_lm_metrics"},
    ),
}

# the output the failing job had, and Snakemake removes
REMOVED = {
    "train_sae": "results/tiny/peaks/sae/s/layer1",
    "train_toy_model": "resources/models/tiny",
    "prepare_sequences": "results/datasets/peaks/sequences.parquet",
}


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory):
    """The tiny config run to completion, and its full plan (job counts) from scratch."""
    wd = copy_workflow(tmp_path_factory.mktemp("invalidation") / "complete", TINY)
    full = planned_jobs(smk(wd, "-n", "--quiet", "rules"))
    smk(wd, timeout=600)
    p = smk(wd, "-n")
    assert "Nothing to be done" in p.stdout + p.stderr
    return wd, full


@pytest.mark.workflow
@pytest.mark.parametrize("case", list(CASES))
def test_config_change_survives_a_failed_upstream_job(complete_run, tmp_path, case):
    done, full = complete_run
    path, value, failing, replanned, untouched = CASES[case]
    # copytree keeps mtimes (copy2) and .snakemake/metadata: the copy is the finished run
    wd = tmp_path / "wd"
    shutil.copytree(done, wd, symlinks=True)
    assert (wd / REMOVED[failing]).exists()

    cfg = copy.deepcopy(TINY)
    node = cfg
    for key in path[:-1]:
        node = node[key]
    assert node[path[-1]] != value
    node[path[-1]] = value
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    script = wd / "scripts" / f"{failing}.py"
    original = script.read_text()
    script.write_text("raise SystemExit('injected failure: the job was rejected')\n")
    try:
        p = smk(wd, check=False, timeout=600)
    finally:
        script.write_text(original)
    log = p.stdout + p.stderr
    assert p.returncode != 0, log[-3000:]
    assert f"rule {failing}:" in log and "injected failure" in log, log[-3000:]
    assert not (wd / REMOVED[failing]).exists(), "Snakemake kept the failed job's output"

    p = smk(wd, "-n", "--quiet", "rules")
    jobs = planned_jobs(p)
    print(f"{case}: planned after the failure: {jobs}")
    missing = {
        rule: (jobs.get(rule, 0), full[rule]) for rule in replanned if jobs.get(rule) != full[rule]
    }
    assert not missing, f"{case}: rule: (planned, in the full plan): {missing}"
    assert not untouched & set(jobs), f"{case}: replanned beyond the change: {jobs}"
    assert set(jobs) <= replanned, jobs

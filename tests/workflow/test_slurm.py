"""The workflow's test config (its sharded DNA run) through ``--profile profiles/slurm`` on a real
SLURM.

Needs a running SLURM (``bash tests/slurm/up.sh`` as root brings up a single-node one with two
fake GPUs; CI does that and sets SAEFLOW_REQUIRE_SLURM=1 so that a SLURM that fails to come up
fails the test instead of skipping it). The run uses the repository's own SLURM profile with
only the account changed and one CPU per GPU (the test node has two CPUs): partitions ``cpu``
and ``gpu``, ``--gpus=a100:1`` for the GPU rules, retries, memory per attempt, squeue status.

The run is the test config's small toy LM (toy_esm_small: 2 blocks, 32 wide) on the sharded CTCF
windows with one SAE recipe: every kind of job goes through sbatch, each about as cheap as it gets.
Mid-run the toy-LM training job (a GPU job) is cancelled with scancel after its first
checkpoint; the test checks that SLURM ran every job (job ids in the SLURM logs), that the
cancelled job was submitted again and resumed from its checkpoint, and that every output the
local run of the test config also made (its comparison builds the small model's SAE, catalog,
probes and head scan) is the same, bit for bit.

The local run comes first, then the SLURM run (``local_run`` is requested before ``slurm_run``).
Overlapping them was tried: on a 2-core machine two torch jobs with 2 threads each slow each other
down tenfold (OpenMP threads spinning on oversubscribed cores), far more than the overlap saves.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from wfutil import REPO, copy_workflow, load_test_config

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

MODEL = "toy_esm_small"  # the test config's small toy LM: the model of the SLURM run


def slurm_is_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=15
        ).stdout
    except subprocess.TimeoutExpired:
        return False
    return bool(re.search(r"^(idle|mixed|allocated|completing)", out, re.M))


def require_slurm() -> None:
    if not slurm_is_up():
        if os.environ.get("SAEFLOW_REQUIRE_SLURM") == "1":
            pytest.fail(
                "SAEFLOW_REQUIRE_SLURM=1 but no SLURM answers (sinfo); see tests/slurm/up.sh"
            )
        pytest.skip("no SLURM running here: `sudo bash tests/slurm/up.sh` brings one up (CI does)")


@pytest.fixture(scope="session")
def slurm_run(tmp_path_factory):
    """The test config submitted through the SLURM profile, in the background, with a watcher that
    scancels the toy-LM training job once it has written its first checkpoint. Request it after
    ``local_run``: the two must not share the CPUs (see the module docstring)."""
    require_slurm()
    root = tmp_path_factory.mktemp("slurm")
    wd = copy_workflow(root / "wd", slurm_config())
    prof = ci_profile(wd)
    log_path = root / "snakemake.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--profile", str(prof.relative_to(wd))],
        cwd=wd,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    run = SimpleNamespace(wd=wd, proc=proc, log=log_path, cancelled=None)
    ckpt = wd / "resources" / "models" / f"{MODEL}.ckpt"
    stop = threading.Event()

    def watch():
        while proc.poll() is None and not stop.is_set():
            if run.cancelled is None and ckpt.exists():
                jobs = toy_lm_jobs(slurm_job_logs(wd))
                if len(jobs) == 1 and job_state(jobs[0].stem) == "RUNNING":
                    run.cancelled = jobs[0].stem
                    subprocess.run(["scancel", run.cancelled], check=True)
            time.sleep(1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield run
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        watcher.join(timeout=10)
        log.close()


def slurm_config() -> dict:
    """The test config cut to a sharded DNA run of its small toy LM with one SAE recipe: every kind
    of job (toy LM with its checkpoint, sharded extraction, SAE training, evaluation, catalog, the
    evidence rules that run the model on a GPU) goes through sbatch, at about a quarter of the
    whole config's jobs (each SLURM job pays for a fresh Snakemake; the whole config took ~18 min
    here, the big toy LM's DNA run ~14 min)."""
    cfg = load_test_config()
    cfg["runs"] = [{"model": MODEL, "dataset": "ctcf_peaks", "saes": ["topk_x4_k16"]}]
    cfg["comparisons"] = []  # the comparison rules are cheap localrules; the local run covers them
    return cfg


def ci_profile(wd: Path) -> Path:
    """profiles/slurm with the test cluster's account and one CPU per GPU; everything else as
    shipped."""
    prof = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    prof["default-resources"]["slurm_account"] = "saeflow-ci"
    for rule in prof["set-resources"].values():
        rule["cpus_per_gpu"] = 1
    # same torch threads as the local run, so the outputs can be compared bit for bit
    threads = load_test_config()["threads"]
    prof["set-threads"] = {rule: threads for rule in prof.get("set-threads", {})}
    prof["slurm-keep-successful-logs"] = (
        True  # the plugin deletes them by default; the test reads them
    )
    prof["slurm-init-seconds-before-status-checks"] = 5  # first status poll after 5 s, not 40
    prof["jobs"] = 6
    prof["latency-wait"] = 5
    d = wd / "profiles" / "slurm-ci"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return d


def toy_lm_jobs(logs: dict[str, list[Path]]) -> list[Path]:
    """The SLURM logs of the toy LM's training jobs (the plugin files them under the job's
    wildcards)."""
    return [f for f in logs.get("train_toy_model", []) if f.parent.name == MODEL]


def slurm_job_logs(wd: Path) -> dict[str, list[Path]]:
    """rule -> SLURM log files (one per submitted job, named after the SLURM job id)."""
    out: dict[str, list[Path]] = {}
    for f in (wd / ".snakemake" / "slurm_logs").rglob("*.log"):
        rule = next(
            (p[len("rule_") :] for p in f.relative_to(wd).parts if p.startswith("rule_")), None
        )
        if rule and f.stem.isdigit():
            out.setdefault(rule, []).append(f)
    return out


def job_state(job_id: str) -> str:
    p = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return p.stdout.strip()


def comparable_files(root: Path) -> list[Path]:
    keep = {
        ".safetensors",
        ".npy",
        ".parquet",
        ".tsv",
        ".js",
        ".html",
        ".css",
    }  # + the atlas, byte for byte
    files = []
    for top in ("results", "resources/models"):
        files += [
            f.relative_to(root) for f in (root / top).rglob("*") if f.is_file() and f.suffix in keep
        ]
    # the atlas index lists every SAE recipe of the run: the local run has four on ctcf_peaks, this
    # one
    # has one (its per-recipe shards are compared byte for byte)
    return sorted(
        f for f in files if not (f.parts[-3:-1] == ("atlas", "data") and f.name == "index.js")
    )


def assert_same(a: Path, b: Path) -> None:
    if a.suffix == ".tsv":
        x, y = (pd.read_csv(p, sep="\t") for p in (a, b))
        drop = [c for c in x.columns if "seconds" in c]
        x, y = x.drop(columns=drop), y.drop(columns=drop)
        if "metric" in x.columns:  # metric/value tables: wall times are not results
            x, y = (t[~t.metric.str.contains("seconds")].reset_index(drop=True) for t in (x, y))
        pd.testing.assert_frame_equal(x, y, check_exact=True, obj=str(a))
    elif a.suffix == ".parquet":
        pd.testing.assert_frame_equal(
            pd.read_parquet(a), pd.read_parquet(b), check_exact=True, obj=str(a)
        )
    else:
        assert a.read_bytes() == b.read_bytes(), f"{a} differs from the local run's"


def test_test_config_through_slurm_with_a_cancelled_gpu_job(local_run, slurm_run):
    wd, proc = slurm_run.wd, slurm_run.proc
    try:
        proc.wait(timeout=2400)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the SLURM run did not finish in 40 min")
    out = slurm_run.log.read_text()
    assert proc.returncode == 0, out[-6000:]
    cancelled = slurm_run.cancelled
    assert cancelled is not None, "never saw the toy-LM job running with a checkpoint to cancel"

    # every job went through sbatch: one SLURM log (named by job id) per submitted job
    logs = slurm_job_logs(wd)
    assert {
        "train_toy_model",
        "extract_activations",
        "train_sae",
        "evaluate_sae",
        "feature_catalog",
    } <= set(logs)
    assert {"head_scan", "patching", "feature_ablation", "feature_evidence", "probes"} <= set(logs)
    assert len(logs["extract_activations"]) == 3  # ctcf_peaks in 3 shards
    ids = [f.stem for fs in logs.values() for f in fs]
    assert len(ids) == len(set(ids))
    for i in ids:
        assert re.search(rf"\b{i}\b", out), f"SLURM job {i} not in snakemake's output"
    # the cancelled GPU job was submitted again and resumed from its checkpoint
    toy = sorted(toy_lm_jobs(logs), key=lambda f: int(f.stem))
    assert len(toy) == 2 and toy[0].stem == cancelled, toy
    rule_log = (wd / "logs" / "train_toy_model" / f"{MODEL}.log").read_text()
    steps = load_test_config()["models"][MODEL]["toy"]["steps"]
    assert re.search(rf"resumed from .*{MODEL}\.ckpt at step \d+ of {steps}", rule_log), rule_log[
        -3000:
    ]
    assert not (wd / "resources" / "models" / f"{MODEL}.ckpt").exists()
    # localrules ran here, not through the queue
    assert "catalog_summary" not in logs and "eval_summary" not in logs

    # the same results as the local run of the whole test config, wherever both made them (the
    # local run builds of the small model what its comparison reads: SAE, catalog, probes, head
    # scan; not patching, ablation or feature evidence)
    mine, theirs = comparable_files(wd), comparable_files(local_run)
    both = sorted(set(mine) & set(theirs))
    assert any(f.suffix == ".safetensors" and "resources" in f.parts for f in both)  # the toy LM
    assert any(f.suffix == ".safetensors" and "sae" in f.parts for f in both)
    assert {"probes.tsv", "head_scan.tsv"} <= {f.name for f in both if "evidence" in f.parts}
    assert any(f.parts[:2] == ("results", MODEL) and "activations" in f.parts for f in both)
    for f in both:
        assert_same(wd / f, local_run / f)

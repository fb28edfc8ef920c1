"""Helpers for the workflow tests: copies of the repository in a temporary directory, run with
Snakemake."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def copy_workflow(dest: Path, config: dict | None = None) -> Path:
    for part in ("workflow", "scripts", "envs", "profiles", "config"):
        shutil.copytree(REPO / part, dest / part)
    if config is not None:
        (dest / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def smk(
    workdir: Path, *args: str, check: bool = True, timeout: int = 1500
) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.run(
        [*SNAKEMAKE, "--cores", "2", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and p.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}"
        )
    return p


def planned_jobs(p: subprocess.CompletedProcess) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run."""
    out = p.stdout + p.stderr
    jobs, on = {}, False
    for line in out.splitlines():
        if line.startswith("job ") and "count" in line:
            on = True
            continue
        if on:
            parts = line.split()
            if not parts or parts[0].startswith("-"):
                continue
            if parts[0] == "total":
                break
            jobs[parts[0]] = int(parts[1])
    return jobs


def load_test_config() -> dict:
    return yaml.safe_load((REPO / "tests" / "config" / "test.yaml").read_text())


def resolved_config(*configs: dict) -> dict:
    """``configs`` merged in order, later over earlier (as ``--configfile`` merges over
    config/config.yaml), validated with the schema's defaults filled in and resolved, as the
    workflow does when it parses."""
    from snakemake.utils import update_config, validate

    import saeflow.config as saeflow_config

    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    cfg: dict = {}
    for c in configs:
        update_config(cfg, yaml.safe_load(yaml.safe_dump(c)))  # a deep copy
    validate(cfg, str(schema))
    cfg.update(saeflow_config.resolve(cfg, yaml.safe_load(schema.read_text())))
    return cfg

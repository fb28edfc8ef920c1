"""How long Snakemake takes to build the DAG of a big study (target: under 10 s).

The study: 2 local models x 18 layers x 3 SAE recipes, each model run on 2 datasets (a peak set
and a task, both on the toy reference so ground-truth recovery runs too), every analysis on:
extraction in 4 shards per dataset, SAE training, evaluation, catalog, recovery, summaries.
The models are stand-in directories (a config.json with 18 layers): a dry run never opens
weights. Runs ``snakemake -n --quiet`` (and, for the job count, once without --quiet) in a copy
of the workflow in a temp dir, ``--repeat`` times, and reports the median wall time.

    .venv/bin/python benchmarks/dag_build.py [--repeat 5] [--layers 18]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def study_config(tmp: Path, n_layers: int) -> dict:
    models = {}
    for name in ("model_a", "model_b"):
        d = tmp / "models" / name
        d.mkdir(parents=True)
        (d / "config.json").write_text(
            json.dumps({"num_hidden_layers": n_layers, "model_type": "esm"})
        )
        models[name] = {"source": "local", "path": str(d)}
    return {
        "references": {
            "toy": yaml.safe_load((REPO / "config" / "config.yaml").read_text())["references"][
                "toy"
            ]
        },
        "models": models,
        "datasets": {
            "ctcf_peaks": {"reference": "toy", "kind": "peaks", "shards": 4},
            "promoter_tata": {"reference": "toy", "kind": "task", "shards": 4},
        },
        "runs": [
            {"model": m, "dataset": d} for m in models for d in ("ctcf_peaks", "promoter_tata")
        ],
        "saes": {
            "topk_x8_k32": {"arch": "topk", "expansion": 8, "k": 32},
            "batchtopk_x8_k32": {"arch": "batchtopk", "expansion": 8, "k": 32},
            "jumprelu_x8_l32": {"arch": "jumprelu", "expansion": 8, "target_l0": 32},
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--layers", type=int, default=18)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        wd = tmp / "wd"
        for part in ("workflow", "scripts", "envs", "profiles", "config"):
            shutil.copytree(REPO / part, wd / part)
        (wd / "config" / "config.yaml").write_text(yaml.safe_dump(study_config(tmp, args.layers)))
        cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "2"]
        p = subprocess.run(cmd + ["--quiet", "rules"], cwd=wd, capture_output=True, text=True)
        if p.returncode:
            sys.exit(p.stdout + p.stderr)
        m = re.search(r"^total\s+(\d+)", p.stdout + p.stderr, re.M)
        jobs = int(m.group(1)) if m else -1
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            subprocess.run(cmd + ["--quiet", "all"], cwd=wd, capture_output=True, check=True)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(
        f"DAG of {jobs} jobs (2 models x {args.layers} layers x 3 SAEs x 2 datasets, every "
        "analysis): "
        f"snakemake -n median {med:.2f} s over {args.repeat} runs (min {min(times):.2f}, max "
        f"{max(times):.2f}); "
        f"target < 10 s: {'PASS' if med < 10 else 'FAIL'}"
    )


if __name__ == "__main__":
    main()

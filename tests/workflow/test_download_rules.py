"""The download rules through Snakemake, against the local fixture server (no internet).

Only the download rules run (the `downloads` target and the indexed reference), not the DAG.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from dlserver import FixtureServer, md5, populate
from wfutil import copy_workflow, planned_jobs, smk


@pytest.fixture(scope="module")
def server():
    with FixtureServer() as s:
        s.sources = populate(s)
        yield s


def download_config(src: dict, base: str) -> dict:
    return {
        "references": {
            "grch38": {
                "source": "download",
                "url": src["fasta_url"],
                "md5": src["fasta_md5"],
                "sha256": src["fasta_sha256"],
                "encode_peaks": src["peaks_acc"],
                "encode_signal": src["signal_acc"],
            },
        },
        "encode": src["encode"],
        "nt_benchmark": {"repo_id": src["nt_repo"], "revision": src["nt_commit"], "endpoint": base},
        "models": {
            "tiny": {
                "source": "hub",
                "family": "toy",
                "n_layers": 2,
                "hub": {"repo_id": src["model_repo"], "revision": "main", "endpoint": base},
            },
            "scgpt": {
                "source": "url",
                "family": "scgpt",
                "n_layers": 12,
                "files": src["scgpt_files"],
            },
        },
        "datasets": {
            "ctcf": {"reference": "grch38", "kind": "peaks"},
            "promoter_tata": {"kind": "task", "nt_task": "promoter_tata"},
            "replogle": {"kind": "cells", "url": src["h5ad_url"], "sha256": src["h5ad_sha256"]},
        },
        "genesets": {
            "GO_Biological_Process_2023": {"source": "enrichr", "enrichr_url": src["enrichr_url"]},
            "hallmark": {"source": "gmt", "url": src["gmt_url"]},
            "trrust_human": {"source": "trrust", "trrust_url": src["trrust_url"]},
            "string_human": {
                "source": "string",
                "string_links_url": src["string_links_url"],
                "string_info_url": src["string_info_url"],
                "min_score": 700,
            },
        },
        "runs": [],
        "saes": {},
        "downloads": {"retries": 1, "timeout": 20, "backoff": 0},
    }


@pytest.fixture(scope="module")
def downloaded(server, tmp_path_factory):
    src = server.sources
    wd = copy_workflow(tmp_path_factory.mktemp("dl"), download_config(src, server.base))
    p = smk(wd, "downloads", "resources/references/grch38/genome.fa.gz", timeout=600)
    return wd, p


def test_download_rules_fetch_every_source(downloaded, server):
    wd, p = downloaded
    src = server.sources
    res = wd / "resources"
    raw = res / "references/grch38/download/GRCh38.primary_assembly.genome.fa.gz"
    rec = json.loads((raw.parent / (raw.name + ".sha256.json")).read_text())
    assert rec["md5"] == src["fasta_md5"] and rec["url"] == src["fasta_url"]
    assert (res / "references/grch38/genome.fa.gz.fai").read_text().startswith("chr1\t320")
    assert md5((res / f"encode/{src['peaks_acc']}.bed.gz").read_bytes()) == md5(src["peaks_bytes"])
    assert (res / f"encode/{src['signal_acc']}.bigWig").exists()
    task = pd.read_parquet(res / "nt_benchmark/promoter_tata/task.parquet")
    assert len(task) == 5 and set(task.split) == {"train", "test"}
    assert (res / "cells/replogle.h5ad").read_bytes()[:4] == b"\x89HDF"
    gmt = (res / "genesets/GO_Biological_Process_2023.gmt").read_text().splitlines()
    assert gmt[1].split("\t")[2:] == ["CDK1", "CCNB1", "TP53"]
    assert (res / "genesets/hallmark.gmt").exists()
    assert list(pd.read_csv(res / "genesets/trrust_human.tsv", sep="\t").columns)[:2] == [
        "source",
        "target",
    ]
    assert len(pd.read_csv(res / "genesets/string_human.tsv", sep="\t")) == 2
    model = json.loads((res / "models/tiny/saeflow_download.json").read_text())
    assert model["commit"] == src["model_commit"] and (res / "models/tiny/config.json").exists()
    assert not (res / "models/tiny/README.md").exists()  # not in the default allow_patterns
    assert sorted(
        json.loads((res / "models/scgpt/saeflow_download.json").read_text())["files"]
    ) == ["args.json", "best_model.pt", "vocab.json"]
    assert (wd / "logs/download_encode" / f"{src['peaks_acc']}.bed.gz.log").exists()


def test_downloads_are_not_repeated(downloaded):
    wd, _ = downloaded
    p = smk(wd, "-n", "downloads", "resources/references/grch38/genome.fa.gz")
    assert "Nothing to be done" in p.stdout + p.stderr


def test_the_plan_includes_downloaded_inputs(downloaded):
    """A run on downloaded sources plans the downloads' consumers without touching the network."""
    wd, _ = downloaded
    cfg = json.loads(json.dumps(download_config({**dummy_sources()}, "http://127.0.0.1:9")))
    cfg["runs"] = [
        {"model": "tiny", "dataset": "ctcf"},
        {"model": "tiny", "dataset": "promoter_tata"},
    ]
    cfg["saes"] = {"s": {"arch": "topk"}}
    cfg["models"]["tiny"]["layers"] = [1, 2]
    wd2 = copy_workflow(wd.parent / "plan", cfg)
    p = smk(wd2, "-n")
    jobs = planned_jobs(p)
    # peaks only: no run needs the signal
    assert jobs["download_fasta"] == 1 and jobs["download_encode"] == 1
    assert jobs["download_hub_model"] == 1 and jobs["download_nt_task"] == 1
    assert jobs["train_sae"] == 4 and "train_toy_model" not in jobs and "download_cells" not in jobs


def dummy_sources() -> dict:
    url = "http://127.0.0.1:9/x"
    return {
        "fasta_url": url + ".fa.gz",
        "fasta_md5": "",
        "fasta_sha256": "",
        "peaks_acc": "ENCFF000PKS",
        "signal_acc": "ENCFF000SIG",
        "encode": {},
        "nt_repo": "o/r",
        "nt_commit": "c" * 40,
        "model_repo": "o/m",
        "scgpt_files": [{"url": url + "/best_model.pt"}],
        "h5ad_url": url,
        "h5ad_sha256": "",
        "enrichr_url": url,
        "gmt_url": url,
        "trrust_url": url,
        "string_links_url": url,
        "string_info_url": url,
    }

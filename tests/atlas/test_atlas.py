"""The feature atlas (saeflow.atlas): the builder on synthetic runs, and the site in headless
Chromium.

Browser tests drive Debian's chromium through Playwright (``executable_path``; no downloaded
browser). Without chromium or playwright they skip, unless SAEFLOW_REQUIRE_BROWSER=1 (CI sets it,
and installs chromium itself), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import atlas_fixtures as fx
import numpy as np
import pandas as pd
import pytest

from saeflow import histogram
from saeflow.atlas import build_atlas, nearest_features, relative_files
from saeflow.utils import SaeflowError


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def browser():
    why = None
    exe = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        why = "the playwright package is not installed (pip install -e '.[test]')"
    if why is None and exe is None:
        why = "no chromium on PATH (apt-get install chromium)"
    if why:
        if os.environ.get("SAEFLOW_REQUIRE_BROWSER") == "1":
            pytest.fail(f"SAEFLOW_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe)
        yield b
        b.close()


class Site:
    """One page on a built atlas, collecting console errors."""

    def __init__(self, browser, root: Path):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto((root / "index.html").as_uri())
        self.page.wait_for_selector("body[data-ready]")

    def go(self, route: str) -> str:
        self.page.evaluate("delete document.body.dataset.ready")
        self.page.evaluate(f"location.hash = {route!r}")
        self.page.wait_for_selector("body[data-ready]")
        return self.page.inner_text("main")

    def close(self):
        self.page.close()


@pytest.fixture(scope="module")
def dna_atlas(tmp_path_factory):
    d = tmp_path_factory.mktemp("atlas_dna")
    run = fx.write_dna_run(d / "results" / "toy" / "peaks")
    ev = run / "evidence" / "topk" / f"layer{fx.MOTIF_LAYER}"
    ev.mkdir(parents=True)
    pd.DataFrame(
        {
            "feature": [fx.MOTIF_FEATURE, 3],
            "specificity": [4.5, 0.1],
            "p_empirical": [0.001, 0.7],
            "seconds": [1.0, 2.0],
        }
    ).to_csv(ev / "ablation.tsv", sep="\t", index=False)
    pd.DataFrame(
        {"motif": ["MA0139.1"], "feature": [fx.MOTIF_FEATURE + 1], "specificity": [0.3]}
    ).to_csv(ev / "ablation_null.tsv", sep="\t", index=False)  # a null distribution: not shown
    pd.DataFrame(
        {
            "layer": [fx.MOTIF_LAYER],
            "feature": [fx.MOTIF_FEATURE],
            "head": ["L1.H2"],
            "patching_effect": [0.25],
        }
    ).to_csv(run / "evidence" / "patching.tsv", sep="\t", index=False)
    build_atlas(run, run / "atlas", saes={"topk": [1, 2, 3]}, kind="dna")
    return run


@pytest.fixture(scope="module")
def cells_atlas(tmp_path_factory):
    run = fx.write_cells_run(tmp_path_factory.mktemp("atlas_cells") / "results" / "gf" / "pbmc")
    build_atlas(run, run / "atlas", saes={"topk": [1, 2]}, kind="cells")
    return run


# --- builder -------------------------------------------------------------------------------------


def test_histogram_accumulates_on_fixed_log_bins():
    h = histogram.empty(3)
    histogram.accumulate(h, np.array([0, 0, 2, 2, 2]), np.array([1e-5, 1.0, 1.0, 1.05, 1e9]))
    assert h.sum() == 5 and h[1].sum() == 0
    one = np.searchsorted(histogram.EDGES, 1.0, side="right") - 1
    assert h[0, 0] == 1 and h[0, one] == 1  # below the first edge -> the first bin
    assert h[2, one] == 2 and h[2, -1] == 1  # above the last edge -> the last bin


def test_nearest_features_by_decoder_cosine():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 8))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    perm = rng.permutation(10)
    near = nearest_features({1: a, 2: a[perm]}, k=2)
    layer, cos, idx = near[1]["next"]
    assert layer == 2 and (perm[idx[:, 0]] == np.arange(10)).all() and np.allclose(cos[:, 0], 1)
    assert (cos[:, 0] >= cos[:, 1]).all()
    layer, cos, idx = near[2]["prev"]
    assert layer == 1 and (idx[:, 0] == perm).all()


def test_build_is_deterministic_and_relocatable(tmp_path):
    """Same inputs at another absolute path: the same files, byte for byte, and no path inside."""
    runs = [
        fx.write_dna_run(tmp_path / name / "results" / "m" / "d")
        for name in ("one", "two-elsewhere")
    ]
    for run in runs:
        build_atlas(run, run / "atlas", saes={"topk": [1, 2, 3]}, kind="dna")
    files = relative_files(runs[0] / "atlas")
    assert files == relative_files(runs[1] / "atlas")
    assert "index.html" in files and "data/index.js" in files and "data/topk/layer2/f0.js" in files
    for f in files:
        a, b = ((r / "atlas" / f).read_bytes() for r in runs)
        assert a == b, f
        assert str(tmp_path).encode() not in a, f
    # the timing column of the recovery table and of eval json never reaches the site
    assert b"seconds" not in (runs[0] / "atlas" / "data" / "index.js").read_bytes()
    index = json.loads(
        (runs[0] / "atlas" / "data" / "index.js").read_text().split(",", 1)[1].rsplit(");", 1)[0]
    )
    cols = index["saes"][0]["columns"]
    assert (
        cols[:3] == ["layer", "features", "l0"] and len(cols) == len(set(cols)) and "Alive" in cols
    )


def test_missing_catalog_file_is_named(tmp_path):
    run = fx.write_dna_run(tmp_path / "r")
    (run / "catalog" / "topk" / "layer2" / "contexts.tsv").unlink()
    with pytest.raises(SaeflowError, match=r"layer2/contexts\.tsv: missing"):
        build_atlas(run, run / "atlas", saes={"topk": [1, 2, 3]}, kind="dna")
    assert not (run / "atlas").exists()  # nothing half-written
    with pytest.raises(SaeflowError, match=r"catalog/topk/layer9: missing"):
        build_atlas(run, run / "atlas", saes={"topk": [9]}, kind="dna")


def test_evidence_tables_reach_the_feature_page_data(dna_atlas):
    text = (dna_atlas / "atlas" / "data" / "topk" / f"layer{fx.MOTIF_LAYER}" / "f0.js").read_text()
    assert '"ablation":{"columns":["specificity","p_empirical"]' in text
    assert '"patching":{"columns":["head","patching_effect"]' in text
    assert "ablation_null" not in text


# --- in the browser ------------------------------------------------------------------------------


@pytest.mark.browser
def test_overview_loads_without_console_errors(browser, dna_atlas, cells_atlas):
    for run, words in (
        (
            dna_atlas,
            ["layer 1", "layer 3", "CTCF", "Evidence (run-level tables)", "patching (1 rows)"],
        ),
        (cells_atlas, ["layer 1", "layer 2", "Annotated"]),
    ):
        site = Site(browser, run / "atlas")
        text = site.page.inner_text("main")
        for w in words:
            assert w in text, (w, text[:2000])
        assert site.page.locator(".chart svg").count() >= 3  # the per-layer plots
        for route in ("#/topk/flow", "#/topk/modules", "#/topk/layer/1"):
            site.go(route)
        assert site.errors == [], site.errors
        site.close()


@pytest.mark.browser
def test_searching_the_planted_motif_finds_its_feature(browser, dna_atlas):
    site = Site(browser, dna_atlas / "atlas")
    site.page.fill("#q", fx.MOTIF[2:11])
    site.page.press("#q", "Enter")
    site.page.wait_for_selector("body[data-ready=search]")
    first = site.page.locator("#motifresults tbody tr").first.inner_text().split("\t")
    assert first[:2] == [str(fx.MOTIF_LAYER), str(fx.MOTIF_FEATURE)], first
    # the reverse complement finds it too (both strands)
    comp = {"A": "T", "C": "G", "G": "C", "T": "A"}
    rc = "".join(comp[c] for c in reversed(fx.MOTIF[2:11]))
    site.go(f"#/topk/search?q={rc}")
    assert site.page.locator("#motifresults tbody tr").first.inner_text().split("\t")[:2] == [
        "2",
        "7",
    ]
    # a token: every feature whose top tokens hold it
    site.go("#/topk/search?q=G")
    assert site.page.locator("#generesults tbody tr").count() > 0
    assert site.errors == [], site.errors
    site.close()


@pytest.mark.browser
def test_feature_page_shows_contexts_evidence_and_neighbours(browser, dna_atlas):
    site = Site(browser, dna_atlas / "atlas")
    text = site.go(f"#/topk/layer/{fx.MOTIF_LAYER}/feature/{fx.MOTIF_FEATURE}")
    assert f"feature {fx.MOTIF_FEATURE} — {fx.MOTIF}" in text  # the top activating k-mer
    marks = site.page.locator(".ctx mark").all_inner_texts()
    assert marks and set(marks) == {fx.MOTIF}  # activating bases highlighted
    assert "Activation histogram" in text and site.page.locator(".chart rect").count() > 3
    assert "Evidence: ablation" in text and "Evidence: patching" in text and "L1.H2" in text
    assert "previous layer (1)" in text and "next layer (3)" in text
    assert "Ground truth" in text and "CTCF" in text
    site.page.click("text=next →")
    site.page.wait_for_selector(f"text=feature {fx.MOTIF_FEATURE + 1}")
    assert site.errors == [], site.errors
    site.close()


@pytest.mark.browser
def test_layer_table_is_virtualised_sortable_and_filterable(browser, tmp_path):
    run = fx.write_dna_run(tmp_path / "big", layers=(1,), n_features=4608, d=8, n_contexts=1)
    build_atlas(run, run / "atlas", saes={"topk": [1]}, kind="dna")
    site = Site(browser, run / "atlas")
    site.go("#/topk/layer/1")
    rows = site.page.locator("#ftable .row")
    assert 10 < rows.count() < 200  # a window of rows, not 4,608
    site.page.click("#ftable .head div[data-key=max_activation]")  # sort: largest first
    feats = pd.read_parquet(run / "catalog" / "topk" / "layer1" / "features.parquet")
    top = int(
        feats.sort_values(["max_activation", "feature"], ascending=[False, True]).feature.iloc[0]
    )
    assert rows.first.inner_text().split()[0] == str(top)
    site.page.fill("#filter", "4321")
    site.page.wait_for_function("document.querySelectorAll('#ftable .row').length === 1")
    site.page.fill("#filter", "")
    site.page.check("#aliveonly")
    site.page.evaluate("document.querySelector('#ftable .body').scrollTop = 1e6")
    site.page.wait_for_timeout(100)
    last = site.page.locator("#ftable .row").last.inner_text().split()[0]
    assert int(last) in set(feats.feature[feats.alive])
    assert site.errors == [], site.errors
    site.close()


@pytest.mark.browser
def test_gene_and_term_search_and_the_gene_feature_page(browser, cells_atlas):
    site = Site(browser, cells_atlas / "atlas")
    site.go(f"#/topk/search?q={fx.GENE.lower()}")
    first = site.page.locator("#generesults tbody tr").first.inner_text().split("\t")
    assert first[:3] == [str(fx.GENE_LAYER), str(fx.GENE_FEATURE), "0"], first
    site.go("#/topk/search?q=myeloid")
    first = site.page.locator("#termresults tbody tr").first.inner_text().split("\t")
    assert first[:3] == [f"GO_BP: {fx.TERM}", str(fx.GENE_LAYER), str(fx.GENE_FEATURE)], first
    text = site.go(f"#/topk/layer/{fx.GENE_LAYER}/feature/{fx.GENE_FEATURE}")
    assert site.page.locator("#topgenes tbody tr").first.inner_text().split("\t")[0] == fx.GENE
    assert fx.TERM in text and "Cell types" in text and "Co-activation module" in text
    text = site.go(f"#/topk/modules/{fx.GENE_LAYER}")
    assert "module 1" in text and "GO_BP:term 1" in text
    assert site.errors == [], site.errors
    site.close()


# --- on the workflow's own output (the test config, run once per session) ------------------------


@pytest.mark.workflow
@pytest.mark.browser
def test_atlas_of_the_test_config_run(browser, local_run):
    """Every run of the test config has its atlas; its pages show what the run's tables say."""
    base = local_run / "results"
    for run in ("toy_esm/ctcf_peaks", "toy_esm/promoter_tata", "toy_geneformer/pbmc"):
        assert (base / run / "atlas" / "index.html").exists(), run
    # DNA: the catalog's top token of an alive feature is on its page, and its k-mer search finds it
    cat = base / "toy_esm" / "ctcf_peaks" / "catalog" / "topk_x4_k16" / "layer4"
    assert (cat / "histogram.npy").exists()
    feats = pd.read_parquet(cat / "features.parquet")
    f = int(feats[feats.alive].sort_values("frequency", ascending=False).feature.iloc[0])
    token = feats.top_tokens[f].split(",")[0].split(":")[0]
    site = Site(browser, base / "toy_esm" / "ctcf_peaks" / "atlas")
    site.go(f"#/topk_x4_k16/layer/4/feature/{f}")
    assert site.page.locator("#toptokens .chip").first.inner_text().startswith(f"{token} ×")
    assert site.page.locator(".ctx mark").count() > 0
    site.go("#/topk_x4_k16/search?q=CCACCAGGGGGCG")  # the planted CTCF core
    assert site.page.locator("#motifresults tbody tr").count() > 0
    assert site.errors == [], site.errors
    site.close()
    # cells: a feature's first top gene is on its page, and searching the gene lists the feature
    cells = base / "toy_geneformer" / "pbmc" / "cells" / "topk_x4_k16" / "layer1"
    top = pd.read_parquet(cells / "top_genes.parquet")
    row = top[top["rank"] == 0].iloc[0]
    site = Site(browser, base / "toy_geneformer" / "pbmc" / "atlas")
    site.go(f"#/topk_x4_k16/layer/1/feature/{int(row.feature)}")
    assert site.page.locator("#topgenes tbody tr").first.inner_text().split("\t")[0] == row.gene
    site.go(f"#/topk_x4_k16/search?q={row.gene}")
    hits = [r.split("\t")[:2] for r in site.page.locator("#generesults tbody tr").all_inner_texts()]
    assert ["1", str(int(row.feature))] in hits
    assert site.errors == [], site.errors
    site.close()

"""Load times of the feature atlas in headless Chromium, on a synthetic catalog of 18 layers x 4,608
features (targets: overview under 1 s, a feature page under 200 ms, from disk over file://).

Writes a synthetic DNA run (tests/atlas_fixtures.py: catalog, contexts, histograms, eval, decoders
of width --d-in, recovery) to a temp dir, builds its atlas with saeflow.atlas.build_atlas (timed),
then opens ``atlas/index.html`` from disk in Debian's chromium through Playwright:

* overview: a fresh page; the time from navigation start to the overview rendered
  (``SAEFLOW.lastRender.at``: HTML, app.js, data/index.js, tables and SVG plots), --repeat times;
* feature page: on that page, ``location.hash`` set to a feature whose shard was never loaded
  (cold: one <script> of its 128-feature shard, then render), for --features features spread over
  the layers; then the same features again (warm: shard in memory);
* layer page (4,608-row table shard, virtualised) and search (every layer's search and table shard),
  for information.

    .venv/bin/python benchmarks/atlas_load.py [--layers 18] [--features-per-layer 4608] [--d-in 768]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--layers", type=int, default=18)
    ap.add_argument("--features-per-layer", type=int, default=4608)
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--contexts", type=int, default=10, help="top contexts per feature")
    ap.add_argument("--repeat", type=int, default=5, help="overview loads")
    ap.add_argument(
        "--features", type=int, default=36, help="feature pages visited (cold, then warm)"
    )
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument(
        "--keep", type=Path, default=None, help="write the synthetic run here and keep it"
    )
    args = ap.parse_args(argv)

    import atlas_fixtures as fx
    from playwright.sync_api import sync_playwright

    from saeflow.atlas import build_atlas, relative_files

    tmp = Path(tempfile.mkdtemp(prefix="atlas_bench_")) if args.keep is None else args.keep
    layers = list(range(1, args.layers + 1))
    try:
        t = time.perf_counter()
        run = fx.write_dna_run(
            tmp / "results" / "m" / "d",
            layers=layers,
            n_features=args.features_per_layer,
            d=args.d_in,
            n_contexts=args.contexts,
        )
        write_s = time.perf_counter() - t
        t = time.perf_counter()
        sizes = build_atlas(run, run / "atlas", saes={"topk": layers}, kind="dna")
        build_s = time.perf_counter() - t
        files = relative_files(run / "atlas")
        root = run / "atlas"
        total = sum((root / f).stat().st_size for f in files)
        print(
            f"synthetic run written in {write_s:.1f} s; atlas built in {build_s:.1f} s: "
            f"{len(files)} files, "
            f"{total / 2**20:.1f} MiB ({ {k: round(v / 2**20, 2) for k, v in sizes.items()} } MiB)"
        )
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise SystemExit("no chromium on PATH (apt-get install chromium)")
        res = {
            "layers": args.layers,
            "features_per_layer": args.features_per_layer,
            "d_in": args.d_in,
            "build_s": build_s,
            "files": len(files),
            "bytes": total,
            "sizes": sizes,
        }
        url = (root / "index.html").as_uri()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe)
            version = browser.version
            overview = []
            for _ in range(args.repeat):
                page = browser.new_page()
                page.goto(url)
                page.wait_for_selector("body[data-ready=overview]")
                overview.append(page.evaluate("SAEFLOW.lastRender.at"))
                page.close()
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(url)
            page.wait_for_selector("body[data-ready=overview]")

            def visit(route: str, page_kind: str) -> float:
                page.evaluate("delete document.body.dataset.ready")
                page.evaluate(f"location.hash = {route!r}")
                page.wait_for_selector(f"body[data-ready={page_kind}]")
                return page.evaluate("SAEFLOW.lastRender.ms")

            chunks = (args.features_per_layer + 127) // 128
            targets = [
                (layers[i % len(layers)], (i * 7919) % chunks * 128 + i % 128)
                for i in range(args.features)
            ]
            targets = [(L, min(f, args.features_per_layer - 1)) for L, f in dict.fromkeys(targets)]
            cold = [visit(f"#/topk/layer/{L}/feature/{f}", "feature") for L, f in targets]
            warm = [visit(f"#/topk/layer/{L}/feature/{f}", "feature") for L, f in targets]
            layer_ms = [visit(f"#/topk/layer/{L}", "layer") for L in layers[:3]]
            search_ms = visit("#/topk/search?q=CCACCAGGGGGCG", "search")
            search_warm_ms = visit("#/topk/search?q=GGCGCC", "search")
            browser.close()
        if errors:
            raise SystemExit(f"console errors: {errors[:5]}")
        res.update(
            chromium=version,
            overview_ms=overview,
            feature_cold_ms=cold,
            feature_warm_ms=warm,
            layer_ms=layer_ms,
            search_first_ms=search_ms,
            search_again_ms=search_warm_ms,
        )
        med = statistics.median
        summary = {
            "overview_ms_median": med(overview),
            "overview_ms_max": max(overview),
            "feature_cold_ms_median": med(cold),
            "feature_cold_ms_max": max(cold),
            "feature_warm_ms_median": med(warm),
            "layer_ms_median": med(layer_ms),
            "search_first_ms": search_ms,
            "search_again_ms": search_warm_ms,
        }
        res["summary"] = summary
        for k, v in summary.items():
            print(f"{k:>24}: {v:8.1f}")
        ok = summary["overview_ms_max"] < 1000 and summary["feature_cold_ms_max"] < 200
        print(
            "targets (overview < 1000 ms, feature page < 200 ms, worst case):",
            "met" if ok else "NOT met",
        )
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "atlas_load.json").write_text(json.dumps(res, indent=2))
        return 0 if ok else 1
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""The README's screenshot of an atlas feature page (docs/atlas_feature.png), taken by Playwright.

    .venv/bin/python docs/atlas_screenshot.py RUN_DIR [--sae topk_x4_k16] [--layer 4] [--feature N]

RUN_DIR is a workflow directory that ran the test config or the default (it reads
results/toy_esm/ctcf_peaks/atlas and, without --feature, shows the feature recovery.tsv names for
CTCF)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--sae", default="topk_x4_k16")
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--feature", type=int, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "atlas_feature.png")
    a = ap.parse_args()
    base = a.run / "results" / "toy_esm" / "ctcf_peaks"
    layer, feature = a.layer, a.feature
    if feature is None:
        rec = pd.read_csv(base / "recovery" / a.sae / "recovery.tsv", sep="\t")
        best = rec[rec.motif_name == "CTCF"].sort_values("f1", ascending=False).iloc[0]
        layer, feature = int(best.layer), int(best.feature)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium"))
        page = b.new_page(viewport={"width": 1100, "height": 1000})
        page.goto(
            (base / "atlas" / "index.html").as_uri() + f"#/{a.sae}/layer/{layer}/feature/{feature}"
        )
        page.wait_for_selector("body[data-ready=feature]")
        page.screenshot(path=str(a.out), full_page=False)
        b.close()
    print(a.out, a.out.stat().st_size, "bytes", f"(layer {layer}, feature {feature})")


if __name__ == "__main__":
    main()

"""Per-rule cost of a finished workflow run, from Snakemake's ``benchmark:`` files.

Every heavy rule writes ``benchmarks/<rule>/<wildcards>.tsv`` (wall seconds, max RSS, MB read and
written, CPU seconds) in the run's working directory; this sums them per rule into one Markdown
table (jobs, wall seconds in all and of the longest job, peak RSS, MB written, CPU seconds).

    python benchmarks/rule_table.py WORKDIR [--out table.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def rule_table(workdir: str | Path) -> pd.DataFrame:
    rows = []
    root = Path(workdir) / "benchmarks"
    for tsv in sorted(root.rglob("*.tsv")):
        rule = tsv.relative_to(root).parts[0]
        t = pd.read_csv(tsv, sep="\t")
        for r in t.itertuples():
            rows.append(
                dict(rule=rule, s=r.s, max_rss=r.max_rss, io_out=r.io_out, cpu_time=r.cpu_time)
            )
    if not rows:
        raise SystemExit(f"{root}: no benchmark files (did the run finish?)")
    df = pd.DataFrame(rows)
    out = df.groupby("rule").agg(
        jobs=("s", "size"),
        wall_s=("s", "sum"),
        longest_s=("s", "max"),
        peak_rss_mb=("max_rss", "max"),
        written_mb=("io_out", "sum"),
        cpu_s=("cpu_time", "sum"),
    )
    return out.sort_values("wall_s", ascending=False).reset_index()


def markdown(table: pd.DataFrame) -> str:
    lines = [
        "| rule | jobs | wall s (all) | longest job s | peak RSS MB | MB written | CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.rule} | {r.jobs} | {r.wall_s:.1f} | {r.longest_s:.1f} | {r.peak_rss_mb:.0f} "
            f"| {r.written_mb:.1f} | {r.cpu_s:.1f} |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir")
    ap.add_argument("--out")
    a = ap.parse_args()
    text = markdown(rule_table(a.workdir))
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

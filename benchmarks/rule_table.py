"""Per-rule cost of a finished workflow run, from Snakemake's ``benchmark:`` files.

Every rule that runs a script writes ``benchmarks/<rule>/<wildcards>.tsv`` (wall seconds, max
RSS, MB read and written, CPU seconds) in the run's working directory; this sums them per rule
into one Markdown table (jobs, wall seconds in all and of the longest job, peak RSS, MB written,
CPU seconds). Rules of the run without benchmark files (a run made before they had them;
``localrule`` aggregates) get their jobs' wall time from Snakemake's own logs
(``.snakemake/log``: from the job's start line to its "Finished jobid" line, to the second), the
other columns empty. "MB written" is what reached the block device while the job ran (psutil's
write bytes): files still in the page cache when it ended are not counted.

    python benchmarks/rule_table.py WORKDIR [--out table.md]
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime
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
    measured = {r["rule"] for r in rows}
    rows += [r for r in log_walls(workdir) if r["rule"] not in measured]
    df = pd.DataFrame(rows)
    out = df.groupby("rule").agg(
        jobs=("s", "size"),
        wall_s=("s", "sum"),
        longest_s=("s", "max"),
        peak_rss_mb=("max_rss", "max"),
        written_mb=("io_out", lambda x: x.sum(min_count=1)),
        cpu_s=("cpu_time", lambda x: x.sum(min_count=1)),
    )
    return out.sort_values("wall_s", ascending=False).reset_index()


def log_walls(workdir: str | Path) -> list[dict]:
    """Per finished job of Snakemake's logs under ``workdir``: rule and wall seconds."""
    stamp = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
    rows = []
    for log in sorted((Path(workdir) / ".snakemake" / "log").glob("*.log")):
        started, when, rule = {}, None, None
        for line in log.read_text().splitlines():
            if m := stamp.match(line):
                when = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
            elif m := re.match(r"^(?:local)?rule (\w+):$", line):
                rule = m.group(1)
            elif (m := re.match(r"^\s+jobid: (\d+)$", line)) and rule:
                started[m.group(1)] = (rule, when)
                rule = None
            elif m := re.match(r"^Finished jobid: (\d+) \(Rule: (\w+)\)", line):
                name, t0 = started.pop(m.group(1), (m.group(2), None))
                if t0 is not None and name not in ("all", "resource_plan"):
                    s = (when - t0).total_seconds()
                    rows.append(dict(rule=name, s=s, max_rss=None, io_out=None, cpu_time=None))
    return rows


def markdown(table: pd.DataFrame) -> str:
    lines = [
        "| rule | jobs | wall s (all) | longest job s | peak RSS MB | MB written | CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def f(x, fmt):
        return "–" if pd.isna(x) else fmt.format(x)

    for r in table.itertuples():
        lines.append(
            f"| {r.rule} | {r.jobs} | {r.wall_s:.1f} | {r.longest_s:.1f} | "
            f"{f(r.peak_rss_mb, '{:.0f}')} | {f(r.written_mb, '{:.1f}')} | {f(r.cpu_s, '{:.1f}')} |"
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

"""JASPAR motif scanning on both strands: saeflow.dna.motifscan vs Biopython's Bio.motifs.

Inputs (seeded): ``--seqs`` random sequences of ``--length`` bp (uniform ACGT), a quarter of them
with one CTCF site sampled from the matrix (temperature 0.5) planted at a random position and
strand, so that there are real hits among the chance ones. Motif: MA0139.1 (CTCF, 19 columns) from
pyjaspar's offline JASPAR2024 through ``saeflow.dna.motifs.load_jaspar``; PSSM with pseudocount 0.8
per letter and a uniform background, built by each library (Biopython: ``counts.normalize(
pseudocounts=0.8).log_odds()``), threshold ``min + 0.8 * (max - min)`` (``--frac``).

Timed, each ``--repeat`` times (median reported, the minimum kept in the JSON):

- saeflow ``hits(seqs, pssm, frac)``: encode, scan both strands, threshold, DataFrame;
- saeflow ``scan(seqs, pssm)``: the (N, P) score arrays of both strands only;
- Biopython ``pssm.search(seq, threshold=thr)`` (both strands, the default) over every sequence,
  collected into a list of (sequence, position, score);
- Biopython ``pssm.calculate(seq)`` and ``rc.calculate(seq)`` (rc = ``pssm.reverse_complement()``,
  made once) over every sequence: every score of both strands, like ``scan``.

Checked: the same hits (Biopython's reverse-strand position ``p < 0`` is start ``p + len(seq)``)
with scores within 1e-5, and every ``calculate`` score of both strands equal to ``scan``'s.

    .venv/bin/python benchmarks/motif_scan.py [--seqs 2000] [--length 1000] [--repeat 5]

Prints a table and a JSON summary, and writes benchmarks/results/motif_scan.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def make_seqs(motif, n: int, length: int, seed: int) -> tuple[list[str], int]:
    from saeflow.dna.motifs import revcomp

    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGT", np.uint8)
    raw = letters[rng.integers(0, 4, (n, length))]
    seqs = [row.tobytes().decode() for row in raw]
    planted = 0
    L = motif.length
    for i in range(0, n, 4):
        site = motif.sample(rng, 1, temperature=0.5)[0]
        if rng.random() < 0.5:
            site = revcomp(site)
        p = int(rng.integers(0, length - L + 1))
        seqs[i] = seqs[i][:p] + site + seqs[i][p + L :]
        planted += 1
    return seqs, planted


def timed(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seqs", type=int, default=2000)
    ap.add_argument("--length", type=int, default=1000)
    ap.add_argument("--matrix", default="MA0139.1")
    ap.add_argument(
        "--frac", type=float, default=0.8, help="relative threshold: min + frac * (max - min)"
    )
    ap.add_argument("--pseudocount", type=float, default=0.8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    import Bio
    from Bio import motifs as bio_motifs

    import saeflow
    from saeflow.dna.motifs import load_jaspar
    from saeflow.dna.motifscan import hits, pssm, relative_threshold, scan

    motif = load_jaspar(args.matrix)
    seqs, planted = make_seqs(motif, args.seqs, args.length, args.seed)
    m = pssm(motif, pseudocount=args.pseudocount)
    bm = bio_motifs.Motif(
        alphabet="ACGT", counts={b: list(motif.counts[:, i]) for i, b in enumerate("ACGT")}
    )
    bp = bm.counts.normalize(pseudocounts=args.pseudocount).log_odds()
    thr = bp.min + args.frac * (bp.max - bp.min)
    print(
        f"{args.seqs} sequences x {args.length} bp ({planted} with a planted site), {args.matrix} "
        f"({motif.name}, L={motif.length}), threshold {thr:.4f} = min + {args.frac} (max - min); "
        f"saeflow's {relative_threshold(m, args.frac):.4f}",
        flush=True,
    )

    # ---- saeflow
    df, t_hits = timed(lambda: hits(seqs, m, frac=args.frac), args.repeat)
    res, t_scan = timed(lambda: scan(seqs, m), args.repeat)

    # ---- Biopython
    def bio_search():
        return [
            (i, pos, score)
            for i, s in enumerate(seqs)
            for pos, score in bp.search(s, threshold=thr)
        ]

    rc = bp.reverse_complement()

    def bio_calculate():
        return [(bp.calculate(s), rc.calculate(s)) for s in seqs]

    bio_hits, t_search = timed(bio_search, args.repeat)
    bio_scores, t_calc = timed(bio_calculate, args.repeat)

    # ---- agreement
    expected = {
        (i, int(p) + len(seqs[i]) if p < 0 else int(p), "-" if p < 0 else "+"): float(sc)
        for i, p, sc in bio_hits
    }
    got = {(int(r.seq), int(r.start), r.strand): float(r.score) for r in df.itertuples()}
    same_hits = set(got) == set(expected) and len(got) == len(df)
    hit_diff = max((abs(got[k] - expected[k]) for k in got.keys() & expected.keys()), default=0.0)
    score_diff, pattern_ok = 0.0, True
    for site, (f, r) in zip(res, bio_scores):
        for ours, theirs in ((site.forward, np.atleast_1d(f)), (site.reverse, np.atleast_1d(r))):
            bad = np.isnan(theirs)
            pattern_ok &= bool((np.isneginf(ours) == bad).all())
            score_diff = max(score_diff, float(np.abs(ours[~bad] - theirs[~bad]).max(initial=0.0)))
    planted_found = int(df.seq[(df.seq % 4 == 0)].nunique())

    med = {
        k: statistics.median(v)
        for k, v in dict(hits=t_hits, scan=t_scan, search=t_search, calculate=t_calc).items()
    }
    ratio = med["search"] / med["hits"]
    ok = same_hits and hit_diff <= 1e-5 and score_diff <= 1e-5 and pattern_ok
    print()
    print(f"| method | median s ({args.repeat} runs) | x saeflow hits |")
    print("|---|---|---|")
    for name, key in (
        ("saeflow hits (scan + threshold + DataFrame)", "hits"),
        ("saeflow scan (scores only)", "scan"),
        ("Biopython pssm.search, per sequence", "search"),
        ("Biopython pssm.calculate + rc.calculate, per sequence", "calculate"),
    ):
        print(f"| {name} | {med[key]:.4f} | {med[key] / med['hits']:.1f} |")
    print()
    print(
        f"hits: saeflow {len(df)}, Biopython {len(expected)}: "
        f"{'identical' if same_hits else 'DIFFERENT'} "
        f"(seq, start, strand), max |score diff| {hit_diff:.2e}; all "
        f"{2 * int(res.n_sites.sum()):,} scores vs "
        f"calculate: max |diff| {score_diff:.2e}, NaN/-inf pattern "
        f"{'equal' if pattern_ok else 'DIFFERENT'}; "
        f"planted sequences with a hit {planted_found}/{planted}"
    )
    print(
        f"speed-up of hits over Biopython search: {ratio:.1f}x "
        f"({'PASS' if ratio >= 10 else 'FAIL'}: target >= 10x); "
        f"scan over calculate: {med['calculate'] / med['scan']:.1f}x; agreement "
        f"{'PASS' if ok else 'FAIL'}"
    )
    rec = dict(
        date=time.strftime("%Y-%m-%d"),
        commit=git_commit(),
        saeflow=getattr(saeflow, "__version__", "?"),
        biopython=Bio.__version__,
        numpy=np.__version__,
        matrix=args.matrix,
        motif_length=motif.length,
        seqs=args.seqs,
        length=args.length,
        planted=planted,
        planted_found=planted_found,
        frac=args.frac,
        threshold=thr,
        pseudocount=args.pseudocount,
        repeat=args.repeat,
        saeflow_hits_s=med["hits"],
        saeflow_scan_s=med["scan"],
        biopython_search_s=med["search"],
        biopython_calculate_s=med["calculate"],
        min_s=dict(hits=min(t_hits), scan=min(t_scan), search=min(t_search), calculate=min(t_calc)),
        speedup_hits_vs_search=ratio,
        speedup_scan_vs_calculate=med["calculate"] / med["scan"],
        speedup_scan_vs_search=med["search"] / med["scan"],
        n_hits=len(df),
        n_hits_biopython=len(expected),
        hits_identical=same_hits,
        hit_score_max_abs_diff=hit_diff,
        calculate_max_abs_diff=score_diff,
        nan_pattern_equal=pattern_ok,
        target_10x=ratio >= 10,
        cpus=os.cpu_count(),
        load_avg=os.getloadavg()[0],
    )
    print(json.dumps(rec, indent=2))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "motif_scan.json").write_text(json.dumps(rec, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Gene-set over-representation of SAE features: saeflow (one call) vs gseapy (one call per
feature).

Synthetic inputs of the size of a single-cell SAE annotated with GO Biological Process:

- a 20,000-gene universe; the background (genes the model saw) is 18,000 of them;
- a GO-BP-sized library: 5,000 sets whose sizes follow a truncated power law on 15..500
  (P(s) ~ s^-1.8, as GO BP's are: median ~30, a long tail), genes drawn with lognormal
  annotation propensities (some genes sit in many terms, as in GO);
- 4,608 features, each with Poisson(50)
  hit genes; 10% of them have half their hits planted from one set, so that there are real
  discoveries and their overlap genes to compare.

saeflow: one ``overrepresentation`` call over all features x all sets (min_size 15, max_size 500
after intersecting with the background; BH over the whole family). gseapy: ``gseapy.enrich(
gene_list=hits, gene_sets=<the sets saeflow tested>, background=<background list>, outdir=None,
cutoff=1, no_plot=True)`` per feature, and ``gseapy.stats.calc_pvalues`` (its statistics core)
per feature. A full gseapy loop over 4,608 features would take hours on 2 cores, so gseapy runs on
a subsample of features (``--gseapy-features``, default 64: half of them planted, evenly spaced)
and its time is extrapolated per feature; the output says so. The p-values of every (feature, term)
gseapy returns for the subsample are compared with saeflow's (relative 1e-8), and so are the overlap
genes with gseapy's ``Genes``: from saeflow's main call for its significant rows (q <= 0.05), and
for every pair from a second saeflow call on the subsample with ``genes_q_max=None``.

Peak memory: VmHWM of this process, reset (``/proc/self/clear_refs``) just before the saeflow call,
so it is the call's own peak over what the inputs already hold; also the RSS before.

    .venv/bin/python benchmarks/enrichment.py [--features 4608] [--sets 5000] [--gseapy-features 64]

Prints a table and writes benchmarks/results/enrichment.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def vm(field: str) -> float:
    """A /proc/self/status memory field in MiB."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":")) / 1024


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def go_like_sizes(rng, n, lo=15, hi=500, alpha=1.8):
    """Sizes from P(s) ~ s^-alpha on [lo, hi] (inverse CDF of the continuous power law)."""
    a = 1.0 - alpha
    u = rng.random(n)
    return np.floor((lo**a + (hi**a - lo**a) * u) ** (1 / a)).astype(int)


def make_inputs(n_genes, n_sets, n_features, mean_hits, seed):
    rng = np.random.default_rng(seed)
    genes = np.array([f"GENE{i:05d}" for i in range(n_genes)], dtype=object)
    background = genes[np.sort(rng.choice(n_genes, int(0.9 * n_genes), replace=False))]
    w = rng.lognormal(0.0, 1.0, n_genes)
    w /= w.sum()
    sizes = go_like_sizes(rng, n_sets)
    # weighted sampling without replacement, vectorised (Efraimidis–Spirakis keys)
    sets = {}
    for j, s in enumerate(sizes):
        keys = rng.random(n_genes) ** (1.0 / (w * n_genes))
        sets[f"GO:{j:07d}"] = genes[np.argpartition(-keys, s)[:s]].tolist()
    nh = np.maximum(rng.poisson(mean_hits, n_features), 5)
    rows, cols = [], []
    planted = {}
    names = list(sets)
    col = {g: i for i, g in enumerate(genes)}
    for f in range(n_features):
        hit = rng.choice(n_genes, nh[f], replace=False)
        if f % 10 == 0:  # half the hits from one set
            t = names[rng.integers(len(names))]
            members = np.array([col[g] for g in sets[t]])
            take = rng.choice(members, min(len(members), nh[f] // 2), replace=False)
            hit = np.unique(np.concatenate([take, hit[: nh[f] - len(take)]]))
            planted[f] = t
        rows.append(np.full(len(hit), f))
        cols.append(hit)
    H = sp.csr_matrix(
        (np.ones(sum(map(len, rows)), bool), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_features, n_genes),
    )
    return genes, background, sets, H, planted, sizes


def network_cost(H, genes, n_perm: int, seed: int) -> dict:
    """Cost of the degree-preserving null at STRING scale (no peer: a cost to plan n_perm by).

    A heavy-tailed undirected network of 230,000 edges on 18,000 of the genes (human STRING at
    combined_score >= 700 has about that many among protein-coding genes), ``n_perm`` rewirings of
    10 swaps per edge, each evaluated for all features.
    """
    import pandas as pd

    from saeflow.cells.enrichment import (
        _edge_counts,
        _hits_on_background,
        network_on_background,
        null_networks,
    )

    rng = np.random.default_rng(seed + 1)
    n_nodes, m = 18000, 230_000
    w = rng.pareto(1.5, n_nodes) + 1
    w /= w.sum()
    a, b = rng.choice(n_nodes, int(1.4 * m), p=w), rng.choice(n_nodes, int(1.4 * m), p=w)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = rng.permutation(np.unique((lo * n_nodes + hi)[lo != hi]))[:m]
    nodes = genes[:n_nodes]
    edges = pd.DataFrame({"source": nodes[key // n_nodes], "target": nodes[key % n_nodes]})
    bg, u, v = network_on_background(edges, nodes, directed=False)
    Hb = _hits_on_background(H, genes, bg)
    t_swap, t_eval = [], []
    it = null_networks(u, v, len(bg), n_perm, directed=False, seed=seed)
    for _ in range(n_perm):
        t = time.perf_counter()
        nu, nv = next(it)
        t_swap.append(time.perf_counter() - t)
        t = time.perf_counter()
        _edge_counts(Hb, nu, nv, len(bg))
        t_eval.append(time.perf_counter() - t)
    rec = dict(
        edges=int(u.size),
        nodes=len(bg),
        max_degree=int(np.bincount(np.r_[u, v]).max()),
        n_perm=n_perm,
        swap_s_per_null=float(np.mean(t_swap)),
        eval_s_per_null=float(np.mean(t_eval)),
    )
    per = rec["swap_s_per_null"] + rec["eval_s_per_null"]
    print(
        f"\nnetwork null at STRING scale ({u.size:,} edges, {len(bg):,} genes, max degree "
        f"{rec['max_degree']}): "
        f"{rec['swap_s_per_null']:.2f} s per rewiring (10 swaps/edge) + "
        f"{rec['eval_s_per_null'] * 1e3:.0f} ms to "
        f"count edges among the hits of all {H.shape[0]} features; 1,000 permutations ~ "
        f"{per * 1000 / 60:.0f} min "
        f"(mean of {n_perm})"
    )
    return rec


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", type=int, default=4608)
    ap.add_argument("--sets", type=int, default=5000)
    ap.add_argument("--genes", type=int, default=20000)
    ap.add_argument("--hits", type=int, default=50, help="mean hit genes per feature (Poisson)")
    ap.add_argument("--gseapy-features", type=int, default=64, help="features run through gseapy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--network-perms",
        type=int,
        default=5,
        help="rewirings timed for the STRING-scale network null (0: skip)",
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    import gseapy
    import pandas as pd

    import saeflow
    from saeflow.cells.enrichment import overrepresentation

    t0 = time.time()
    genes, background, sets, H, planted, sizes = make_inputs(
        args.genes, args.sets, args.features, args.hits, args.seed
    )
    print(
        f"inputs: {args.features} features (mean {H.sum() / H.shape[0]:.1f} hits), {len(sets)} "
        "sets "
        f"(sizes {sizes.min()}..{sizes.max()}, median {int(np.median(sizes))}), universe "
        f"{len(genes)}, "
        f"background {len(background)} ({time.time() - t0:.1f} s to build)",
        flush=True,
    )

    # ---- saeflow: one call
    rss_before = vm("VmRSS")
    peak_reset = reset_peak()
    t = time.perf_counter()
    df = overrepresentation(
        H, {"GO_BP_synthetic": sets}, background, universe=genes, min_size=15, max_size=500
    )
    saeflow_s = time.perf_counter() - t
    peak = vm("VmHWM")
    fam = df.attrs["family_size"]
    n_sets_tested = df.attrs["n_sets"]
    n_sig = int((df.q <= 0.05).sum())
    found = sum(
        ((df.feature == f) & (df.term == t) & (df.q <= 0.05)).any() for f, t in planted.items()
    )
    print(
        f"saeflow: {saeflow_s:.2f} s for {args.features} x {n_sets_tested} = {fam:,} tests; "
        f"{len(df):,} rows "
        f"with k > 0; {n_sig:,} at q <= 0.05; planted found {found}/{len(planted)}",
        flush=True,
    )

    # ---- gseapy: per feature, on a subsample
    # the sets saeflow tested (all with K in 15..500 after intersection): gseapy gets the raw sets
    # and intersects them with the background itself
    K_bg = pd.Series({t: len(set(g) & set(background)) for t, g in sets.items()})
    lib = {t: sets[t] for t in K_bg.index[(K_bg >= 15) & (K_bg <= 500)]}
    assert len(lib) == n_sets_tested, (len(lib), n_sets_tested)
    # half planted features (real discoveries), half others, evenly spaced
    plant = np.array(sorted(planted))
    other = np.setdiff1d(np.arange(args.features), plant)
    half = args.gseapy_features // 2
    sub = np.unique(
        np.r_[
            plant[np.linspace(0, len(plant) - 1, half).astype(int)],
            other[np.linspace(0, len(other) - 1, args.gseapy_features - half).astype(int)],
        ]
    )
    # overlap genes of every compared pair: the same features again with genes for every row (a
    # smaller family, so other q-values, but the same p-values and overlaps)
    genes_all = overrepresentation(
        H[sub],
        {"GO_BP_synthetic": sets},
        background,
        universe=genes,
        features=sub,
        min_size=15,
        max_size=500,
        genes_q_max=None,
    )
    genes_all = {
        (int(f), str(t)): g
        for f, t, g in zip(genes_all.feature, genes_all.term, genes_all.overlap_genes)
    }
    bg_list = list(background)
    bg_set = set(background)
    t_enrich, t_core = [], []
    max_rel, n_cmp, gene_rows, gene_ok, sig_rows, sig_ok = 0.0, 0, 0, 0, 0, 0
    ours_by_f = {f: g for f, g in df[df.feature.isin(sub)].groupby("feature", observed=True)}
    for f in sub:
        hits = genes[H.indices[H.indptr[f] : H.indptr[f + 1]]].tolist()
        t = time.perf_counter()
        res = gseapy.enrich(
            gene_list=hits, gene_sets=lib, background=bg_list, outdir=None, cutoff=1, no_plot=True
        ).res2d
        t_enrich.append(time.perf_counter() - t)
        t = time.perf_counter()
        terms, pvals, *_ = gseapy.stats.calc_pvalues(set(hits), lib, background=bg_set)
        t_core.append(time.perf_counter() - t)
        ours = ours_by_f[f].assign(term=lambda d: d.term.astype(str)).set_index("term")
        if res is None:
            assert ours.empty
            continue
        res = res.set_index("Term")
        if sorted(res.index) != sorted(ours.index):
            raise SystemExit(f"feature {f}: gseapy and saeflow tested different terms with k > 0")
        o = ours.loc[res.index]
        rel = np.abs(o.p.to_numpy() - res["P-value"].to_numpy()) / res["P-value"].to_numpy()
        max_rel = max(max_rel, float(rel.max()))
        core = np.asarray(pvals)
        max_rel = max(
            max_rel, float(np.max(np.abs(ours.loc[list(terms)].p.to_numpy() - core) / core))
        )
        n_cmp += len(res)
        sig = o.overlap_genes.notna()
        sig_rows += int(sig.sum())
        sig_ok += sum(
            set(a.split(";")) == set(b.split(";"))
            for a, b in zip(o.overlap_genes[sig], res.Genes[sig])
        )
        gene_rows += len(res)
        gene_ok += sum(
            set(genes_all[(int(f), t)].split(";")) == set(g.split(";"))
            for t, g in res.Genes.items()
        )
        print(
            f"  gseapy feature {f}: enrich {t_enrich[-1]:.2f} s, calc_pvalues {t_core[-1]:.2f} s, "
            f"{len(res)} terms with k > 0",
            flush=True,
        )

    per_saeflow = saeflow_s / args.features
    per_enrich = float(np.mean(t_enrich))
    per_core = float(np.mean(t_core))
    rows = [
        (
            "saeflow overrepresentation (one call, all features)",
            args.features,
            saeflow_s,
            per_saeflow,
            1.0,
        ),
        (
            "gseapy.enrich (per feature, extrapolated)",
            len(sub),
            per_enrich * args.features,
            per_enrich,
            per_enrich / per_saeflow,
        ),
        (
            "gseapy.stats.calc_pvalues (per feature, extrapolated)",
            len(sub),
            per_core * args.features,
            per_core,
            per_core / per_saeflow,
        ),
    ]
    print()
    print(
        f"| method | features timed | total s for {args.features} features | ms per feature | x "
        "saeflow |"
    )
    print("|---|---|---|---|---|")
    for name, n, tot, per, ratio in rows:
        print(f"| {name} | {n} | {tot:,.1f} | {per * 1e3:,.2f} | {ratio:,.0f} |")
    print()
    print(
        f"gseapy timed on {len(sub)} of {args.features} features; its totals are per-feature "
        "means x "
        f"{args.features} (extrapolated, not run)."
    )
    print(
        f"p-values compared: {n_cmp:,} (feature, term) pairs; max relative difference "
        f"{max_rel:.2e} "
        f"({'PASS' if max_rel <= 1e-8 else 'FAIL'} at 1e-8); overlap genes equal on "
        f"{gene_ok:,}/{gene_rows:,} "
        f"pairs (of them significant, from the main call: {sig_ok}/{sig_rows})"
    )
    ratio = per_enrich / per_saeflow
    print(
        f"speed-up per feature over gseapy.enrich: {ratio:,.0f}x "
        f"({'PASS' if ratio >= 100 else 'FAIL'}: "
        f"target >= 100x)"
    )
    print(
        f"saeflow peak memory: VmHWM {peak:,.0f} MiB during the call, {peak - rss_before:,.0f} "
        "MiB over the "
        f"RSS before it ({rss_before:,.0f} MiB: interpreter, libraries, inputs)"
        f"{'' if peak_reset else '; peak not reset, so the process peak'}"
    )
    net = network_cost(H, genes, args.network_perms, args.seed) if args.network_perms else {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rec = dict(
        date=time.strftime("%Y-%m-%d"),
        commit=git_commit(),
        saeflow=saeflow.__version__ if hasattr(saeflow, "__version__") else "?",
        gseapy=gseapy.__version__,
        features=args.features,
        sets=len(sets),
        sets_tested=n_sets_tested,
        family_size=fam,
        rows=len(df),
        significant=n_sig,
        planted=len(planted),
        planted_found=int(found),
        saeflow_s=saeflow_s,
        saeflow_ms_per_feature=per_saeflow * 1e3,
        gseapy_features=len(sub),
        gseapy_enrich_ms_per_feature=per_enrich * 1e3,
        gseapy_calc_pvalues_ms_per_feature=per_core * 1e3,
        speedup_vs_enrich=ratio,
        speedup_vs_calc_pvalues=per_core / per_saeflow,
        p_compared=n_cmp,
        p_max_rel_diff=max_rel,
        genes_rows=gene_rows,
        genes_equal=int(gene_ok),
        significant_rows_compared=sig_rows,
        significant_genes_equal=int(sig_ok),
        peak_mib=peak,
        rss_before_mib=rss_before,
        cpus=os.cpu_count(),
        network=net,
    )
    (out / "enrichment.json").write_text(json.dumps(rec, indent=2) + "\n")
    return 0 if max_rel <= 1e-8 and gene_ok == gene_rows and sig_ok == sig_rows else 1


if __name__ == "__main__":
    sys.exit(main())

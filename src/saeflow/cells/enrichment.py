"""Gene-set and network enrichment of SAE features of single-cell models.

Every SAE feature of a single-cell model (Geneformer, scGPT) is summarised by its *hit genes*
(e.g. its top genes by decoder weight or mean activation, :func:`top_hits`). This module asks, for
all features at once, whether the hits over-represent a gene set (:func:`overrepresentation`) or
hold more network edges than chance (:func:`edge_enrichment`).

The statistical decisions, in one place:

**Background.** The universe of every test is the *background*: the genes the model saw in the
data (its vocabulary genes present in the cells). Gene sets are intersected with the background,
and hits outside the background are dropped, before anything is counted, as gseapy's ``enrich``
does with a background list. Set-size limits ``min_size``/``max_size`` are applied to the set
size *after* this intersection (``K`` in the tables), so a GO term with 600 genes of which 400 are
in the background is tested, and one with 20 genes of which 9 are in the background is not (at
``min_size=10``).

**Test.** One-sided hypergeometric upper tail ``p = P(X >= k)`` with ``X ~ Hypergeom(N, K, n)``:
``N`` background genes, ``K`` of them in the set, ``n`` hits of the feature, ``k`` hits in the set.
This is ``scipy.stats.hypergeom.sf(k - 1, N, K, n)`` (and gseapy's ``calc_pvalues``) and Fisher's
exact test, one-sided. It is computed by :func:`hypergeom_sf`, an exact log-space implementation
that agrees with scipy to a relative 1e-8 (tested; ~1e-10 in practice) and evaluates each distinct
``(k, K, n)`` once: scipy's array ``sf`` costs tens of microseconds per element, and an enrichment
table has millions of elements but few distinct combinations.

**Family.** Benjamini–Hochberg is applied over *the whole family the caller passes in one call*:
every feature x every set that passed the size filter x every library. Tests whose overlap is
``k = 0`` have ``p = 1`` exactly; their p-values are never materialised, but they are *counted* in
the family size ``m`` (BH with ``m`` larger than the number of stored p-values is the same as BH
with the missing tests at ``p = 1``). Features without a single hit in the background are tests
too (``p = 1``) and counted. Pass several libraries in one call (:func:`pool_libraries` builds the
argument) to correct over all of them; results of separate calls can be pooled afterwards with
:func:`pool_results`. The family size is the ``family_size`` column and ``df.attrs["family_size"]``.

**Effect sizes.** ``expected = n K / N`` (the hypergeometric mean), ``fold = k / expected``, and the
odds ratio of the 2x2 table with the Haldane–Anscombe correction (0.5 added to every cell, so it is
finite when a cell is 0): ``(k+.5)(N-K-n+k+.5) / ((K-k+.5)(n-k+.5))``, the same formula gseapy
reports.

**Networks.** TRRUST (directed TF -> target) and STRING (undirected PPI) are used two ways:
(1) each TF's targets as a gene set (:func:`trrust_gene_sets`, then :func:`overrepresentation`);
(2) the number of network edges among a feature's hits, against a degree-preserving null
(:func:`edge_enrichment`): the network restricted to the background is rewired by double-edge
swaps (:func:`degree_preserving_swaps`, seeded), every node keeps its degree (in- and out-degree
for a directed network), and the empirical p-value is ``(1 + #{null >= observed}) / (1 + n_perm)``,
then BH over features. One edge among 50 hits is not an annotation: hub genes make such edges
common, which is what the degree-preserving null accounts for.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Hashable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import betaln

from saeflow.stats import bh
from saeflow.utils import SaeflowError

log = logging.getLogger(__name__)

GeneSets = Mapping[str, Sequence[str]]

#: columns of :func:`overrepresentation` results, in order
ORA_COLUMNS = [
    "feature",
    "library",
    "term",
    "k",
    "n",
    "K",
    "N",
    "expected",
    "fold",
    "odds_ratio",
    "p",
    "q",
    "overlap_genes",
    "family_size",
]
#: columns of :func:`edge_enrichment` results, in order
EDGE_COLUMNS = [
    "feature",
    "network",
    "n",
    "n_in_network",
    "edges",
    "null_mean",
    "null_sd",
    "z",
    "fold",
    "p",
    "q",
    "n_perm",
    "family_size",
    "edge_list",
]


# --------------------------------------------------------------------------------------
# reading gene sets and networks
# --------------------------------------------------------------------------------------


def read_gmt(path: str | os.PathLike) -> dict[str, list[str]]:
    """Gene sets of a GMT file (term, description, genes... per tab-separated line), read with
    gseapy.

    Genes are kept in file order with repeats and empty fields dropped. A missing file, a file not
    named ``.gmt``, a line with fewer than three fields or without a gene, a term named twice, or a
    file without any set raises :class:`SaeflowError` naming the file (and the line).
    """
    import gseapy

    path = Path(path)
    if not path.is_file():
        raise SaeflowError(f"{path}: gene-set file not found")
    if not path.name.lower().endswith(".gmt"):
        raise SaeflowError(f"{path}: expected a .gmt file (term<TAB>description<TAB>gene...)")
    # gseapy skips malformed lines silently: find them first, so that a truncated or wrong file
    # is an error and not a smaller library.
    seen: set[str] = set()
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) < 3 or not any(g.strip() for g in fields[2:]):
                raise SaeflowError(
                    f"{path}: line {lineno} is not 'term<TAB>description<TAB>gene...' "
                    f"({len(fields)} tab-separated field(s), no gene): {line[:80]!r}"
                )
            term = fields[0].strip()
            if not term:
                raise SaeflowError(f"{path}: line {lineno} has an empty term name")
            if term in seen:
                raise SaeflowError(f"{path}: term {term!r} appears twice (line {lineno})")
            seen.add(term)
    try:
        raw = gseapy.read_gmt(str(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise SaeflowError(f"{path}: not a readable GMT file: {e}") from None
    sets = {}
    for term, genes in raw.items():
        kept = list(dict.fromkeys(g.strip() for g in genes if g.strip()))
        if kept:
            sets[term.strip()] = kept
    if not sets:
        raise SaeflowError(f"{path}: no gene set in the file (empty GMT?)")
    return sets


def read_edges(
    path: str | os.PathLike, required: Sequence[str] = ("source", "target")
) -> pd.DataFrame:
    """An edge table written by the download rules (TSV or parquet with a header)."""
    from saeflow.utils import read_table

    path = Path(path)
    if not path.is_file():
        raise SaeflowError(f"{path}: edge table not found")
    try:
        df = read_table(path)
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise SaeflowError(f"{path}: not a readable edge table: {e}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SaeflowError(f"{path}: edge table lacks column(s) {missing} (has {list(df.columns)})")
    df = df.dropna(subset=["source", "target"])
    if df.empty:
        raise SaeflowError(f"{path}: no edge in the table")
    df["source"] = df["source"].astype(str)
    df["target"] = df["target"].astype(str)
    return df


def read_trrust(path: str | os.PathLike) -> pd.DataFrame:
    """TRRUST edges as :func:`saeflow.sources.trrust_edges` writes them: source (TF), target, mode,
    pmids."""
    return read_edges(path, ("source", "target", "mode"))


def read_string(path: str | os.PathLike, min_score: int | None = None) -> pd.DataFrame:
    """STRING edges as :func:`saeflow.sources.string_edges` writes them: source < target (symbols),
    combined_score; optionally only edges with ``combined_score >= min_score``."""
    df = read_edges(path, ("source", "target", "combined_score"))
    if min_score is not None:
        df = df[df.combined_score >= min_score]
        if df.empty:
            raise SaeflowError(f"{path}: no edge with combined_score >= {min_score}")
    return df.reset_index(drop=True)


def trrust_gene_sets(edges: pd.DataFrame, by_mode: bool = False) -> dict[str, list[str]]:
    """Each TF's targets as a gene set (the TF itself is not added).

    With ``by_mode``, one set per TF and regulation mode (``"STAT3 Activation"``, ...), as Enrichr's
    TRRUST library does; otherwise one set per TF with all its targets.
    """
    df = edges[["source", "target"] + (["mode"] if by_mode else [])].drop_duplicates()
    key = df.source + " " + df["mode"].astype(str) if by_mode else df.source
    return {str(t): sorted(set(g)) for t, g in df.target.groupby(key.values)}


def pool_libraries(
    libraries: Mapping[str, str | os.PathLike | GeneSets],
) -> dict[str, dict[str, list[str]]]:
    """Several libraries as one argument of :func:`overrepresentation`, hence one BH family.

    ``libraries`` maps a library name to a GMT path or to a dict term -> genes. The family of a
    call is exactly what it is given: pool every library whose results will be read together.
    """
    out = {}
    for name, lib in libraries.items():
        if isinstance(lib, (str, os.PathLike)):
            out[str(name)] = read_gmt(lib)
        elif isinstance(lib, Mapping):
            out[str(name)] = {str(t): list(g) for t, g in lib.items()}
        else:
            raise SaeflowError(
                f"library {name!r}: expected a GMT path or a dict term -> genes, got "
                f"{type(lib).__name__}"
            )
    if not out:
        raise SaeflowError("no gene-set library given")
    return out


# --------------------------------------------------------------------------------------
# hits
# --------------------------------------------------------------------------------------


def top_hits(scores, n_top: int, min_score: float | None = 0.0) -> sp.csr_matrix:
    """Boolean (features x genes) CSR of each feature's ``n_top`` highest-scoring genes.

    ``scores`` is a dense features x genes array (e.g. mean activation of each feature in cells
    expressing each gene, or decoder weights). Genes with a score ``<= min_score`` are never hits
    (None: no floor), so a feature that is silent everywhere has no hit. Ties at the cut are
    broken by ``argpartition`` (arbitrary but deterministic).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise SaeflowError(f"scores must be features x genes (2-D), got shape {s.shape}")
    F, G = s.shape
    n_top = min(int(n_top), G)
    if n_top <= 0:
        raise SaeflowError(f"n_top must be positive, got {n_top}")
    idx = np.argpartition(-s, n_top - 1, axis=1)[:, :n_top]
    rows = np.repeat(np.arange(F), n_top)
    cols = idx.ravel()
    keep = np.ones(cols.shape, bool) if min_score is None else s[rows, cols] > min_score
    return sp.csr_matrix((np.ones(int(keep.sum()), bool), (rows[keep], cols[keep])), shape=(F, G))


def _as_hits(hits, universe, features) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """(binary CSR features x universe, universe gene names, feature labels)."""
    if isinstance(hits, Mapping):
        labels = np.asarray(list(hits.keys()) if features is None else features, dtype=object)
        if len(labels) != len(hits):
            raise SaeflowError(f"{len(labels)} feature labels for {len(hits)} features")
        lists = [list(dict.fromkeys(map(str, g))) for g in hits.values()]
        all_genes = np.asarray([g for gl in lists for g in gl], dtype=object)
        if universe is None:
            universe = np.asarray(sorted(set(all_genes.tolist())), dtype=object)
        universe = _gene_index(universe, "universe")
        col = universe.get_indexer(all_genes) if len(all_genes) else np.zeros(0, np.int64)
        if (col < 0).any():
            bad = sorted(set(all_genes[col < 0].tolist()))
            raise SaeflowError(
                f"{len(bad)} hit gene(s) are not in the gene universe: "
                f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}"
            )
        rows = np.repeat(np.arange(len(lists)), [len(g) for g in lists])
        H = sp.csr_matrix(
            (np.ones(len(col), np.float64), (rows, col)), shape=(len(lists), len(universe))
        )
        return H, np.asarray(universe, dtype=object), labels
    if universe is None:
        raise SaeflowError("a hit matrix needs its universe: the gene of each column")
    universe = _gene_index(universe, "universe")
    H = sp.csr_matrix(hits) if not sp.issparse(hits) else hits.tocsr()
    if H.ndim != 2 or H.shape[1] != len(universe):
        raise SaeflowError(
            f"the hit matrix has {H.shape[1] if H.ndim == 2 else '?'} gene columns but the "
            f"universe has {len(universe)} genes: columns must be the universe's genes, in order"
        )
    H = H.astype(bool).astype(np.float64)
    H.eliminate_zeros()
    H.sum_duplicates()
    labels = np.arange(H.shape[0]) if features is None else np.asarray(features, dtype=object)
    if len(labels) != H.shape[0]:
        raise SaeflowError(f"{len(labels)} feature labels for {H.shape[0]} rows of the hit matrix")
    return H, np.asarray(universe, dtype=object), labels


def _gene_index(genes, what: str) -> pd.Index:
    idx = pd.Index(
        np.asarray(
            list(genes) if not isinstance(genes, (np.ndarray, pd.Index)) else genes, dtype=object
        ).astype(str)
    )
    if len(idx) == 0:
        raise SaeflowError(f"the {what} is empty: no gene to test against")
    if not idx.is_unique:
        dup = idx[idx.duplicated()].unique()[:5].tolist()
        raise SaeflowError(f"the {what} names a gene more than once: {dup}")
    return idx


def _background(background) -> pd.Index:
    """The background as a sorted unique index (sorting makes overlap gene lists alphabetical)."""
    if background is None:
        raise SaeflowError("the background is required: the genes the model saw in the data")
    genes = pd.Index(np.asarray(list(background), dtype=object).astype(str)).unique().sort_values()
    if len(genes) == 0:
        raise SaeflowError(
            "the background is empty: no gene the model saw, nothing to test against"
        )
    return genes


def _hits_on_background(H, universe, bg: pd.Index) -> sp.csr_matrix:
    """Re-index the hit matrix's columns from the universe onto the background (hits outside
    dropped)."""
    col = bg.get_indexer(np.asarray(universe, dtype=object))
    if not (col >= 0).any():
        raise SaeflowError(
            "no gene of the universe is in the background: are both the same kind of "
            "identifier (symbols vs Ensembl ids)?"
        )
    coo = H.tocoo()
    c = col[coo.col]
    ok = c >= 0
    out = sp.csr_matrix((np.ones(int(ok.sum())), (coo.row[ok], c[ok])), shape=(H.shape[0], len(bg)))
    out.sum_duplicates()
    out.sort_indices()
    return out


# --------------------------------------------------------------------------------------
# hypergeometric tail and Benjamini–Hochberg
# --------------------------------------------------------------------------------------


def _log_pmf(x, N, K, n):
    """log P(X = x), X ~ Hypergeom(N, K, n), via betaln (accurate for large arguments; scipy does
    the same)."""

    def lchoose(a, b):
        return -np.log1p(a) - betaln(a - b + 1, b + 1)

    return lchoose(K, x) + lchoose(N - K, n - x) - lchoose(N, n)


def _decreasing_sum(x0, N, K, n, stop, up: bool, tol: float = 1e-18):
    """sum_{j>=0} pmf(x0 +- j) / pmf(x0) while within ``stop`` (inclusive), the terms decreasing."""
    total = np.ones(len(x0))
    term = np.ones(len(x0))
    x = x0.astype(np.float64).copy()
    stop = stop.astype(np.float64)
    act = np.flatnonzero(x != stop)
    Nf, Kf, nf = N.astype(np.float64), K.astype(np.float64), n.astype(np.float64)
    while act.size:
        xa, Ka, na, Na = x[act], Kf[act], nf[act], Nf[act]
        if up:  # pmf(x+1)/pmf(x)
            r = (Ka - xa) * (na - xa) / ((xa + 1) * (Na - Ka - na + xa + 1))
            x[act] = xa + 1
        else:  # pmf(x-1)/pmf(x)
            r = xa * (Na - Ka - na + xa) / ((Ka - xa + 1) * (na - xa + 1))
            x[act] = xa - 1
        t = term[act] * r
        term[act] = t
        total[act] += t
        act = act[(x[act] != stop[act]) & (t > tol * total[act])]
    return total


def _unique_rows(*cols):
    """The unique tuples of integer columns and the inverse, via one mixed-radix key.

    Constant columns (``N`` in one call) take no room in the key. When the key space is small (an
    enrichment table: k <= ~100, K <= 500, n <= ~100) the unique keys are found with a dense mark
    table instead of a sort.
    """
    lo = [int(c.min()) for c in cols]
    radix = [int(c.max()) - m + 1 for c, m in zip(cols, lo)]
    space = math.prod(radix)
    if space >= 2**62:
        uniq, inv = np.unique(np.stack(cols), axis=1, return_inverse=True)
        return (*uniq, np.asarray(inv).ravel())
    key = np.zeros(cols[0].shape, np.int64)
    for c, r, m in zip(cols, radix, lo):
        key = key * r + (c - m)
    if space <= 1 << 24:
        mark = np.zeros(space, bool)
        mark[key] = True
        ukey = np.flatnonzero(mark)
        slot = np.cumsum(mark, dtype=np.int64) - 1
        inv = slot[key]
    else:
        ukey, inv = np.unique(key, return_inverse=True)
        inv = np.asarray(inv).ravel()
    out = []
    for r, m in zip(reversed(radix), reversed(lo)):
        out.append(ukey % r + m)
        ukey = ukey // r
    return (*reversed(out), inv)


def hypergeom_sf(k, N, K, n) -> np.ndarray:
    """``P(X >= k)`` for ``X ~ Hypergeom(N, K, n)``, elementwise; equals
    ``scipy.stats.hypergeom.sf(k-1, N, K, n)``.

    Exact summation in log space, on the unique ``(k, N, K, n)`` combinations only (an enrichment
    table repeats few of them many times). The pmf is unimodal with mode
    ``floor((n+1)(K+1)/(N+2))``: for ``k`` above the mode the upper tail is summed from ``k`` up,
    otherwise ``1 - P(X <= k-1)`` is summed from ``k-1`` down; both sums run away from the mode, so
    their terms fall and stop once below 1e-18 of the sum. Relative error vs scipy < 1e-9 in the
    tests (where scipy's value is a normal float). On the benchmark's 2.9 million (feature, set)
    overlaps this takes ~0.3 s; ``scipy.stats.hypergeom.sf`` on the same array, minutes.
    """
    k, N, K, n = (np.asarray(a, dtype=np.int64) for a in (k, N, K, n))
    shape = np.broadcast_shapes(k.shape, N.shape, K.shape, n.shape)
    k, N, K, n = (np.broadcast_to(a, shape).ravel() for a in (k, N, K, n))
    k = np.maximum(k, 0)  # P(X >= k) = 1 for k <= 0
    if ((K < 0) | (n < 0) | (K > N) | (n > N)).any():
        raise SaeflowError("hypergeometric parameters out of range (need 0 <= K, n <= N)")
    if k.size == 0:
        return np.zeros(shape)
    uk, uN, uK, un, inv = _unique_rows(k, N, K, n)
    p = np.empty(uk.shape[0])
    lo = np.maximum(0, un + uK - uN)
    hi = np.minimum(un, uK)
    p[uk <= lo] = 1.0
    p[uk > hi] = 0.0
    mid = (uk > lo) & (uk <= hi)
    mode = (un + 1) * (uK + 1) // (uN + 2)
    upper = np.flatnonzero(mid & (uk > mode))
    if upper.size:
        a = uk[upper]
        s = _decreasing_sum(a, uN[upper], uK[upper], un[upper], hi[upper], up=True)
        p[upper] = np.exp(_log_pmf(a, uN[upper], uK[upper], un[upper]) + np.log(s))
    lower = np.flatnonzero(mid & (uk <= mode))
    if lower.size:
        a = uk[lower] - 1
        s = _decreasing_sum(a, uN[lower], uK[lower], un[lower], lo[lower], up=False)
        p[lower] = 1.0 - np.exp(_log_pmf(a, uN[lower], uK[lower], un[lower]) + np.log(s))
    np.clip(p, 0.0, 1.0, out=p)
    return p[inv].reshape(shape)


# --------------------------------------------------------------------------------------
# over-representation
# --------------------------------------------------------------------------------------


def _set_matrix(libraries: Mapping[str, GeneSets], bg: pd.Index, min_size, max_size):
    """Binary (background x sets) CSC of the sets that pass the size filter after intersection."""
    libs, terms, cols, rows = [], [], [], []
    n_drop_small = n_drop_large = 0
    j = 0
    for lib, sets in libraries.items():
        lo = min_size[lib] if isinstance(min_size, Mapping) else min_size
        hi = max_size[lib] if isinstance(max_size, Mapping) else max_size
        if not sets:
            raise SaeflowError(f"library {lib!r} has no gene set")
        names = list(sets.keys())
        genes = [np.asarray(list(sets[t]), dtype=object).astype(str) for t in names]
        lens = np.array([len(g) for g in genes])
        flat = np.concatenate(genes) if genes else np.zeros(0, object)
        idx = bg.get_indexer(flat)
        owner = np.repeat(np.arange(len(names)), lens)
        ok = idx >= 0
        key = np.unique(owner[ok].astype(np.int64) * len(bg) + idx[ok])  # dedupe genes within a set
        pairs = np.stack([key // len(bg), key % len(bg)])
        size = np.bincount(pairs[0], minlength=len(names))
        keep = (size >= lo) & (size <= hi)
        n_drop_small += int((size < lo).sum())
        n_drop_large += int((size > hi).sum())
        newcol = np.full(len(names), -1)
        newcol[keep] = j + np.arange(int(keep.sum()))
        sel = keep[pairs[0]]
        rows.append(pairs[1][sel])
        cols.append(newcol[pairs[0][sel]])
        terms.extend(np.asarray(names, dtype=object)[keep].tolist())
        libs.extend([lib] * int(keep.sum()))
        j += int(keep.sum())
        log.info(
            "library %s: %d sets, %d tested after intersecting with the %d-gene background "
            "(size %s..%s)",
            lib,
            len(names),
            int(keep.sum()),
            len(bg),
            lo,
            hi,
        )
    if j == 0:
        raise SaeflowError(
            f"no gene set has between min_size={min_size} and max_size={max_size} genes in the "
            f"background ({len(bg)} genes; {n_drop_small} too small, {n_drop_large} too large): "
            "is the background in the same identifiers as the sets?"
        )
    r, c = np.concatenate(rows), np.concatenate(cols)
    S = sp.csc_matrix((np.ones(len(r)), (r, c)), shape=(len(bg), j))
    S.sort_indices()
    return S, np.asarray(libs, dtype=object), np.asarray(terms, dtype=object)


def _overlap_genes(
    H: sp.csr_matrix, S: sp.csc_matrix, fi: np.ndarray, tj: np.ndarray, bg: pd.Index
) -> list[str]:
    """';'-joined genes in hits(f) ∩ set(t) for each pair (fi[i], tj[i]); vectorised membership."""
    if fi.size == 0:
        return []
    N = S.shape[0]
    # every (set, gene) membership as a sorted key
    set_of = np.repeat(np.arange(S.shape[1], dtype=np.int64), np.diff(S.indptr))
    mkeys = set_of * N + S.indices.astype(np.int64)  # sorted: CSC with sorted indices
    cnt = np.diff(H.indptr)[fi]
    pair = np.repeat(np.arange(fi.size), cnt)
    starts = np.repeat(H.indptr[fi], cnt)
    offs = np.arange(pair.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    gene = H.indices[starts + offs].astype(np.int64)
    cand = tj[pair].astype(np.int64) * N + gene
    pos = np.searchsorted(mkeys, cand)
    pos = np.minimum(pos, mkeys.size - 1)
    hit = mkeys[pos] == cand
    pair, gene = pair[hit], gene[hit]  # grouped by pair, genes ascending (= alphabetical)
    names = np.asarray(bg, dtype=object)[gene]
    bounds = np.searchsorted(pair, np.arange(fi.size + 1))
    return [";".join(names[bounds[i] : bounds[i + 1]]) for i in range(fi.size)]


def overrepresentation(
    hits,
    libraries: Mapping[str, GeneSets],
    background: Iterable[str],
    *,
    universe: Sequence[str] | None = None,
    features: Sequence[Hashable] | None = None,
    min_size: int | Mapping[str, int] = 15,
    max_size: int | Mapping[str, int] = 500,
    q_max: float | None = None,
    genes_q_max: float | None = 0.05,
) -> pd.DataFrame:
    """Hypergeometric over-representation of every gene set among every feature's hits; one BH
    family.

    Parameters
    ----------
    hits
        Each feature's hit genes: a dict feature -> genes (``universe`` optional; a gene outside a
        given universe is an error), or a boolean/0-1 (features x genes) dense or sparse matrix
        whose columns are ``universe``.
    libraries
        library name -> {term: genes} (:func:`pool_libraries` builds it from GMT files). All of
        them, all their sets passing the size filter and all features form *one* multiple-testing
        family.
    background
        The genes the model saw in the data. Sets and hits are intersected with it; ``N`` is its
        size.
    min_size, max_size
        Tested sets have ``min_size <= K <= max_size`` genes *in the background* (after
        intersection); an int, or a dict per library.
    q_max
        Keep only rows with ``q <= q_max`` (None: every row with ``k > 0``; the family is the same).
    genes_q_max
        ``overlap_genes`` is filled for rows with ``q <= genes_q_max`` (None: every row), else None.

    Returns
    -------
    DataFrame with :data:`ORA_COLUMNS`, one row per tested (feature, set) with ``k > 0`` (and
    ``q <= q_max``), sorted by p. ``n`` = the feature's hits in the background, ``K`` = set size in
    the background, ``N`` = background size, ``family_size`` = number of tests BH corrected over
    (also ``df.attrs["family_size"]``; ``df.attrs["complete"]`` says whether every ``k > 0`` row is
    there, which :func:`pool_results` needs).
    """
    H, uni, labels = _as_hits(hits, universe, features)
    bg = _background(background)
    Hb = _hits_on_background(H, uni, bg)
    n_out = int(H.sum() - Hb.sum())
    if n_out:
        log.info("%d hit(s) outside the background dropped", n_out)
    S, libs, terms = _set_matrix(libraries, bg, min_size, max_size)
    F, T, N = Hb.shape[0], S.shape[1], len(bg)
    family = F * T
    n_hits = np.asarray(Hb.sum(axis=1)).ravel().astype(np.int64)
    if (n_hits == 0).any():
        log.warning(
            "%d of %d features have no hit in the background; their tests (p = 1) are counted in "
            "the "
            "family",
            int((n_hits == 0).sum()),
            F,
        )
    K = np.asarray(S.sum(axis=0)).ravel().astype(np.int64)

    ov = (Hb @ S).tocoo()  # overlaps k > 0 only: (features x genes) @ (genes x sets)
    fi, tj = ov.row.astype(np.int64), ov.col.astype(np.int64)
    k = np.rint(ov.data).astype(np.int64)
    del ov
    n, Kt = n_hits[fi], K[tj]
    p = hypergeom_sf(k, N, Kt, n)
    n_tested = p.size
    # rows come out of the CSR product by feature, then set: a stable sort by p keeps that order
    # among ties, and the same order serves BH
    order = np.argsort(p, kind="stable")
    p = p[order]
    q = bh(p, family)
    if q_max is not None:
        order, p, q = order[q <= q_max], p[q <= q_max], q[q <= q_max]
    fi, tj, k, n, Kt = (a[order] for a in (fi, tj, k, n, Kt))
    del order

    expected = n * Kt / N
    odds = ((k + 0.5) * (N - Kt - n + k + 0.5)) / ((Kt - k + 0.5) * (n - k + 0.5))
    genes = np.full(p.size, None, dtype=object)
    want = np.ones(p.size, bool) if genes_q_max is None else q <= genes_q_max
    if want.any():
        genes[want] = _overlap_genes(Hb, S, fi[want], tj[want], bg)
    df = pd.DataFrame(
        {
            "feature": _categorical(labels, fi),
            "library": _categorical(libs, tj),
            "term": _categorical(terms, tj),
            "k": k,
            "n": n,
            "K": Kt,
            "N": np.full(p.size, N, np.int64),
            "expected": expected,
            "fold": k / expected,
            "odds_ratio": odds,
            "p": p,
            "q": q,
            "overlap_genes": genes,
            "family_size": np.full(p.size, family, np.int64),
        },
        copy=False,
    )  # fresh arrays: no copy, no block consolidation (a second copy of every column)
    df.attrs.update(family_size=family, complete=q_max is None, n_features=F, n_sets=T, N=N)
    log.info(
        "over-representation: %d features x %d sets = %d tests; %d with k > 0; %d at q <= 0.05",
        F,
        T,
        family,
        n_tested,
        int((q <= 0.05).sum()),
    )
    return df


def _categorical(values: np.ndarray, idx: np.ndarray) -> pd.Categorical:
    """``values[idx]`` as a categorical (one code per row instead of one Python object)."""
    codes, uniques = pd.factorize(np.asarray(values, dtype=object), sort=False)
    return pd.Categorical.from_codes(codes[idx], categories=uniques)


def pool_results(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Re-adjust the results of separate :func:`overrepresentation` calls as one BH family.

    The pooled family size is the sum of the calls' family sizes; every call must have kept all its
    ``k > 0`` rows (``q_max=None``), since a dropped row would be a missing p-value < 1.
    """
    if not frames:
        raise SaeflowError("no result to pool")
    for i, f in enumerate(frames):
        if not f.attrs.get("complete", False) or "family_size" not in f.attrs:
            raise SaeflowError(
                f"result {i} is not complete (made with q_max set, or not by overrepresentation): "
                "pooling needs every k > 0 row; rerun with q_max=None"
            )
    family = int(sum(f.attrs["family_size"] for f in frames))
    df = pd.concat(
        [f.astype({c: object for c in ("feature", "library", "term")}) for f in frames],
        ignore_index=True,
    )
    df["q"] = bh(df.p.to_numpy(), family)
    df["family_size"] = family
    df = df.sort_values("p", kind="mergesort").reset_index(drop=True)
    df.attrs.update(family_size=family, complete=True)
    return df


# --------------------------------------------------------------------------------------
# networks: degree-preserving null and edge enrichment
# --------------------------------------------------------------------------------------


def network_on_background(
    edges: pd.DataFrame, background, directed: bool
) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """(background index, u, v): the simple graph of ``edges`` among background genes.

    Edges with an endpoint outside the background are dropped (the null rewires only what the
    model's genes can show), as are self-loops (TF autoregulation: a degree-preserving swap cannot
    keep them) and repeats (TRRUST lists a pair once per regulation mode). Undirected edges are
    stored once with ``u < v``.
    """
    bg = _background(background)
    u = bg.get_indexer(edges["source"].astype(str).to_numpy())
    v = bg.get_indexer(edges["target"].astype(str).to_numpy())
    ok = (u >= 0) & (v >= 0) & (u != v)
    u, v = u[ok].astype(np.int64), v[ok].astype(np.int64)
    if not directed:
        u, v = np.minimum(u, v), np.maximum(u, v)
    key = np.unique(u * len(bg) + v)
    u, v = key // len(bg), key % len(bg)
    if u.size == 0:
        raise SaeflowError(
            f"no network edge joins two background genes ({len(edges)} edges, {len(bg)} background "
            "genes): same identifiers?"
        )
    log.info(
        "network: %d of %d edges among background genes (%s)",
        u.size,
        len(edges),
        "directed" if directed else "undirected",
    )
    return bg, u, v


def degree_preserving_swaps(
    u,
    v,
    n_nodes: int,
    *,
    directed: bool,
    rng: np.random.Generator,
    swaps_per_edge: float = 10.0,
    max_rounds: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A random rewiring of the simple graph (u, v) by double-edge swaps that keeps every degree.

    A swap takes edges (a, b), (c, d) and makes (a, d), (c, b); undirected edges are oriented at
    random first, so both rewirings are proposed. It keeps out-degrees of a, c and in-degrees of b,
    d (every degree when undirected), and is rejected when it would create a self-loop or an edge
    that exists. Swaps are proposed in rounds of m/2 disjoint edge pairs (vectorised); a round also
    rejects swaps that would create the same new edge twice. Rounds continue until
    ``swaps_per_edge * m`` swaps were accepted (10 per edge is the usual mixing rule of thumb).
    """
    u = np.asarray(u, dtype=np.int64).copy()
    v = np.asarray(v, dtype=np.int64).copy()
    m = u.size
    if m < 2:
        return u, v
    target = int(math.ceil(swaps_per_edge * m))
    max_rounds = max_rounds or int(40 * max(swaps_per_edge, 1)) + 20

    def keyof(a, b):
        if directed:
            return a * n_nodes + b
        return np.minimum(a, b) * n_nodes + np.maximum(a, b)

    edges = _EdgeSet(keyof(u, v), n_nodes)
    done = rounds = 0
    h = m // 2
    while done < target and rounds < max_rounds:
        rounds += 1
        perm = rng.permutation(m)
        i, j = perm[:h], perm[h : 2 * h]
        a, b, c, d = u[i], v[i], u[j], v[j]
        if not directed:
            flip = rng.random(h) < 0.5
            c, d = np.where(flip, d, c), np.where(flip, c, d)
        k1, k2 = keyof(a, d), keyof(c, b)
        ok = (a != d) & (c != b) & (k1 != k2)
        ok &= ~edges.contains(k1) & ~edges.contains(k2)
        idx = np.flatnonzero(ok)
        new = np.concatenate([k1[idx], k2[idx]])
        _, inv, cnt = np.unique(new, return_inverse=True, return_counts=True)
        dup = cnt[inv] > 1
        idx = idx[~(dup[: idx.size] | dup[idx.size :])]
        idx = idx[: target - done]  # exactly the number of swaps asked for
        edges.replace(
            np.concatenate([keyof(a[idx], b[idx]), keyof(u[j[idx]], v[j[idx]])]),
            np.concatenate([k1[idx], k2[idx]]),
        )
        u[i[idx]], v[i[idx]] = a[idx], d[idx]
        u[j[idx]], v[j[idx]] = c[idx], b[idx]
        done += idx.size
    if not directed:
        u, v = np.minimum(u, v), np.maximum(u, v)
    if done < target:
        log.warning(
            "degree-preserving null: %d of %d swaps accepted in %d rounds (a dense graph?); the "
            "null is "
            "less mixed than asked",
            done,
            target,
            rounds,
        )
    return u, v


class _EdgeSet:
    """Membership of edge keys (``a * n_nodes + b``): a bit per possible key when that takes at most
    128 MiB (a gene background of up to ~32,000 genes), else a sorted array (binary search)."""

    BITSET_MAX_BYTES = 128 << 20

    def __init__(self, keys: np.ndarray, n_nodes: int):
        self.bits = None
        if n_nodes * n_nodes <= 8 * self.BITSET_MAX_BYTES:
            self.bits = np.zeros((n_nodes * n_nodes + 63) // 64, np.uint64)
            np.bitwise_or.at(
                self.bits, keys >> 6, np.left_shift(np.uint64(1), (keys & 63).astype(np.uint64))
            )
        else:
            self.keys = np.sort(keys)

    def contains(self, x: np.ndarray) -> np.ndarray:
        if self.bits is not None:
            return (self.bits[x >> 6] >> (x & 63).astype(np.uint64)) & np.uint64(1) == 1
        pos = np.minimum(np.searchsorted(self.keys, x), self.keys.size - 1)
        return self.keys[pos] == x

    def replace(self, old: np.ndarray, new: np.ndarray) -> None:
        """Remove the (present, distinct) keys ``old`` and add
        the (absent, distinct) keys ``new``."""
        if self.bits is not None:
            one = np.uint64(1)
            np.bitwise_and.at(
                self.bits, old >> 6, ~np.left_shift(one, (old & 63).astype(np.uint64))
            )
            np.bitwise_or.at(self.bits, new >> 6, np.left_shift(one, (new & 63).astype(np.uint64)))
        else:
            keys = np.concatenate([self.keys[~np.isin(self.keys, old, assume_unique=True)], new])
            self.keys = np.sort(keys)


def null_networks(
    u, v, n_nodes: int, n_perm: int, *, directed: bool, seed: int = 0, swaps_per_edge: float = 10.0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``n_perm`` independent degree-preserving rewirings of (u, v), each from the observed network.

    Seeded: permutation ``i`` uses ``np.random.default_rng([seed, i])``, so the null does not
    depend on how many permutations are drawn or in what order they are used.
    """
    for i in range(n_perm):
        yield degree_preserving_swaps(
            u,
            v,
            n_nodes,
            directed=directed,
            rng=np.random.default_rng([seed, i]),
            swaps_per_edge=swaps_per_edge,
        )


def _edge_counts(Hb: sp.csr_matrix, u, v, n_nodes: int) -> np.ndarray:
    """Edges among each feature's hits: diag(H B H^T) with B the (each edge once) adjacency."""
    B = sp.csr_matrix((np.ones(u.size), (u, v)), shape=(n_nodes, n_nodes))
    return np.rint(np.asarray((Hb @ B).multiply(Hb).sum(axis=1)).ravel()).astype(np.int64)


def edge_enrichment(
    hits,
    edges: pd.DataFrame,
    background: Iterable[str],
    *,
    directed: bool,
    network: str = "network",
    universe: Sequence[str] | None = None,
    features: Sequence[Hashable] | None = None,
    n_perm: int = 1000,
    seed: int = 0,
    swaps_per_edge: float = 10.0,
    nulls: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
    list_q_max: float | None = 0.05,
) -> pd.DataFrame:
    """Are there more network edges among each feature's hits than in degree-preserving random
    networks?

    The statistic is the number of edges of ``edges`` (source, target; ``directed`` for TRRUST's
    TF -> target, undirected for STRING) joining two hits of the feature, on the network among
    background genes (:func:`network_on_background`). The null: ``n_perm`` rewirings that keep every
    gene's degree (:func:`null_networks`), each built once and evaluated for all features with one
    sparse product; ``nulls`` can pass them precomputed (edge arrays on the same background index).
    ``p = (1 + #{null >= observed}) / (1 + n_perm)`` per feature (a feature without an edge among
    its hits has p = 1), then BH over all features (``family_size``). The smallest attainable p is
    ``1 / (1 + n_perm)``: with F features a lone discovery needs ``n_perm >= F / alpha``, which is
    logged when not met.

    Returns :data:`EDGE_COLUMNS` per feature, sorted by p: ``n`` hits in the background,
    ``n_in_network`` of them with an edge in the network, ``edges`` observed,
    ``null_mean``/``null_sd``
    of the null counts, ``z = (edges - null_mean) / null_sd`` (a ranking aid beyond the p-value's
    resolution, not a test), ``fold = edges / null_mean``, and ``edge_list`` (``"A-B;..."``,
    ``A->B`` when directed) for features with ``q <= list_q_max`` (None: all)."""
    H, uni, labels = _as_hits(hits, universe, features)
    bg, u, v = network_on_background(edges, background, directed)
    Hb = _hits_on_background(H, uni, bg)
    N, F = len(bg), Hb.shape[0]
    obs = _edge_counts(Hb, u, v, N)
    ge = np.zeros(F, np.int64)
    s1 = np.zeros(F)
    s2 = np.zeros(F)
    count = 0
    if nulls is None:
        if n_perm < 1:
            raise SaeflowError(f"n_perm must be at least 1, got {n_perm}")
        nulls = null_networks(
            u, v, N, n_perm, directed=directed, seed=seed, swaps_per_edge=swaps_per_edge
        )
    for nu, nv in nulls:
        c = _edge_counts(Hb, nu, nv, N)
        ge += c >= obs
        s1 += c
        s2 += c.astype(np.float64) ** 2
        count += 1
    if count == 0:
        raise SaeflowError("no null network given")
    if count < F / 0.05:
        log.info(
            "%s: %d permutations: the smallest p is %.2g, so a single feature among %d cannot "
            "reach "
            "q <= 0.05 on its own",
            network,
            count,
            1 / (1 + count),
            F,
        )
    p = (1.0 + ge) / (1.0 + count)
    p[obs == 0] = 1.0
    q = bh(p)
    null_mean = s1 / count
    null_sd = np.sqrt(np.maximum(s2 / count - null_mean**2, 0.0))
    deg = np.bincount(np.concatenate([u, v]), minlength=N)
    n_in = np.asarray(Hb @ (deg > 0).astype(np.float64)).ravel().astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        fold = np.where(null_mean > 0, obs / null_mean, np.where(obs > 0, np.inf, np.nan))
        z = np.where(null_sd > 0, (obs - null_mean) / null_sd, np.nan)
    lists = np.full(F, None, dtype=object)
    want = np.ones(F, bool) if list_q_max is None else q <= list_q_max
    if want.any():
        lists[want] = _edge_lists(Hb, u, v, N, np.flatnonzero(want), bg, directed)
    df = pd.DataFrame(
        {
            "feature": labels,
            "network": network,
            "n": np.asarray(Hb.sum(axis=1)).ravel().astype(np.int64),
            "n_in_network": n_in,
            "edges": obs,
            "null_mean": null_mean,
            "null_sd": null_sd,
            "z": z,
            "fold": fold,
            "p": p,
            "q": q,
            "n_perm": count,
            "family_size": F,
            "edge_list": lists,
        }
    )
    df = df.iloc[np.lexsort((np.arange(F), p))].reset_index(drop=True)
    df.attrs.update(family_size=F, n_perm=count, directed=directed, n_edges=int(u.size), N=N)
    return df


def _edge_lists(Hb, u, v, N, rows, bg, directed) -> list[str]:
    """The edges among the hits of the features ``rows`` (loop
    over features only, not over tests)."""
    names = np.asarray(bg, dtype=object)
    sep = "->" if directed else "-"
    out = []
    for r in rows:
        g = Hb.indices[Hb.indptr[r] : Hb.indptr[r + 1]]
        inside = np.zeros(N, bool)
        inside[g] = True
        sel = inside[u] & inside[v]
        out.append(";".join(f"{names[a]}{sep}{names[b]}" for a, b in zip(u[sel], v[sel])))
    return out

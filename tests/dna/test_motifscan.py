"""saeflow.dna.motifscan: PSSM scores equal to Biopython's Bio.motifs, hit calling, motif evidence
per token."""

import numpy as np
import pytest
from Bio import motifs as bio_motifs

from saeflow.dna.motifs import load_jaspar, revcomp
from saeflow.dna.motifscan import (
    ScanResult,
    hits,
    pssm,
    relative_threshold,
    scan,
    score_range,
    token_scores,
)
from saeflow.utils import SaeflowError

CTCF = "MA0139.1"


@pytest.fixture(scope="module")
def ctcf():
    return load_jaspar(CTCF)


def bio_pssm(motif, pseudocounts=0.8, background=None):
    """The Bio.motifs PSSM of a saeflow Motif:
    counts.normalize(pseudocounts).log_odds(background)."""
    m = bio_motifs.Motif(
        alphabet="ACGT", counts={b: list(motif.counts[:, i]) for i, b in enumerate("ACGT")}
    )
    return m.counts.normalize(pseudocounts=pseudocounts).log_odds(background)


def as_array(bp):
    return np.array([[bp[b][i] for b in "ACGT"] for i in range(bp.length)])


def random_seqs(rng, n, lo, hi, alphabet="ACGT", p=None):
    letters = np.array(list(alphabet))
    return ["".join(rng.choice(letters, int(rng.integers(lo, hi + 1)), p=p)) for _ in range(n)]


def naive_scores(seq, m):
    """Forward-strand site scores by a plain loop: -inf for windows with a non-ACGT letter."""
    idx = {b: i for i, b in enumerate("ACGT")}
    L = len(m)
    out = []
    for s in range(len(seq) - L + 1):
        w = seq[s : s + L].upper()
        out.append(
            -np.inf if any(c not in idx for c in w) else sum(m[j, idx[c]] for j, c in enumerate(w))
        )
    return np.array(out)


# ----------------------------------------------------------------------------------- PSSM


@pytest.mark.parametrize(
    "pc, bg",
    [
        (0.8, None),
        (0.01, None),
        (2.0, (0.3, 0.2, 0.2, 0.3)),
        ({"A": 0.1, "C": 0.4, "G": 0.4, "T": 0.1}, (0.29, 0.21, 0.21, 0.29)),
    ],
)
def test_pssm_matches_biopython(ctcf, pc, bg):
    bp = bio_pssm(ctcf, pc, None if bg is None else dict(zip("ACGT", bg)))
    ours = pssm(
        ctcf,
        pseudocount=[pc[b] for b in "ACGT"] if isinstance(pc, dict) else pc,
        background=bg or (0.25,) * 4,
    )
    assert ours.shape == (19, 4)
    np.testing.assert_allclose(ours, as_array(bp), rtol=0, atol=1e-12)
    lo, hi = score_range(ours)
    assert lo == pytest.approx(bp.min, abs=1e-9) and hi == pytest.approx(bp.max, abs=1e-9)


def test_pssm_zero_pseudocount_gives_minus_inf(ctcf):
    m = pssm(ctcf, pseudocount=0)
    np.testing.assert_array_equal(np.isneginf(m), ctcf.counts == 0)
    np.testing.assert_allclose(m, as_array(bio_pssm(ctcf, None)))
    with pytest.raises(SaeflowError, match="infinite"):
        relative_threshold(m, 0.8)
    assert pssm(ctcf.counts).tolist() == pssm(ctcf).tolist()  # a bare count matrix works too


# ----------------------------------------------------------------------------------- scanning


def test_scan_equals_biopython_calculate_both_strands(ctcf):
    rng = np.random.default_rng(0)
    seqs = random_seqs(rng, 60, 19, 400)
    seqs += random_seqs(
        rng,
        20,
        1,
        60,
        alphabet="ACGTacgtNR",
        p=[0.2, 0.2, 0.2, 0.2, 0.04, 0.04, 0.04, 0.04, 0.02, 0.02],
    )
    seqs += ["ACG", "C" * 19, ctcf.sample(rng, 1, 0.3)[0]]
    bp = bio_pssm(ctcf)
    rc = bp.reverse_complement()
    res = scan(seqs, pssm(ctcf))
    assert isinstance(res, ScanResult) and len(res) == len(seqs) and res.motif_length == 19
    assert (
        res.forward.shape == (len(seqs), max(map(len, seqs)) - 18)
        and res.forward.dtype == np.float32
    )
    n_nan = 0
    for s, site in zip(seqs, res):
        if len(s) < 19:
            assert len(site.score) == 0
            continue
        fwd = np.atleast_1d(bp.calculate(s))  # Biopython: NaN for windows with N/R; one strand only
        # the reverse strand = the reverse-complemented PSSM, same starts
        rev = np.atleast_1d(rc.calculate(s))
        assert len(site.forward) == len(fwd) == len(s) - 18
        for ours, theirs in ((site.forward, fwd), (site.reverse, rev)):
            bad = np.isnan(theirs)
            n_nan += bad.sum()
            np.testing.assert_array_equal(np.isneginf(ours), bad)
            np.testing.assert_allclose(ours[~bad], theirs[~bad], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(site.score, np.maximum(site.forward, site.reverse))
        np.testing.assert_array_equal(
            site.strand,
            np.where(np.isneginf(site.score), 0, np.where(site.reverse > site.forward, -1, 1)),
        )
    assert n_nan > 0
    # the padded tail of short rows is -inf
    assert np.isneginf(res.forward[len(seqs) - 3]).all()
    # chunking (one sequence per chunk here) does not change anything
    small = scan(seqs, pssm(ctcf), chunk_positions=10)
    np.testing.assert_array_equal(small.forward, res.forward)
    np.testing.assert_array_equal(small.reverse, res.reverse)
    one = scan(seqs, pssm(ctcf), both_strands=False)
    assert one.reverse is None
    np.testing.assert_array_equal(one.forward, res.forward)
    np.testing.assert_array_equal(one.score, res.forward)


@pytest.mark.parametrize("L", [1, 3, 8, 9, 17, 30])
def test_scan_any_motif_length_equals_naive_loop(L):
    rng = np.random.default_rng(L)
    m = rng.normal(size=(L, 4))
    m[rng.random((L, 4)) < 0.05] = -np.inf
    seqs = random_seqs(rng, 12, 1, 90, alphabet="ACGTNa")
    res = scan(seqs, m)
    rcm = m[::-1, ::-1]
    for s, site in zip(seqs, res):
        np.testing.assert_allclose(site.forward, naive_scores(s, m), rtol=0, atol=1e-5)
        np.testing.assert_allclose(site.reverse, naive_scores(s, rcm), rtol=0, atol=1e-5)
        np.testing.assert_allclose(
            site.reverse,
            [naive_scores(revcomp(s[i : i + L].upper()), m)[0] for i in range(len(s) - L + 1)],
            rtol=0,
            atol=1e-5,
        )


def test_hits_equal_biopython_search(ctcf):
    rng = np.random.default_rng(1)
    seqs = random_seqs(rng, 40, 200, 600)
    for i in range(0, 40, 3):  # plant sampled sites on both strands
        site = ctcf.sample(rng, 1, 0.5)[0]
        p = int(rng.integers(0, 150))
        seqs[i] = seqs[i][:p] + (site if i % 2 else revcomp(site)) + seqs[i][p + 19 :]
    m = pssm(ctcf)
    bp = bio_pssm(ctcf)
    for frac in (0.6, 0.8):
        thr = bp.min + frac * (bp.max - bp.min)
        assert relative_threshold(m, frac) == pytest.approx(thr, abs=1e-9)
        expected = {}
        for i, s in enumerate(seqs):
            # reverse-strand hits come as pos - len(s)
            for pos, score in bp.search(s, threshold=thr):
                expected[
                    (i, int(pos) + len(s) if pos < 0 else int(pos), "-" if pos < 0 else "+")
                ] = float(score)
        df = hits(seqs, m, frac=frac)
        assert list(df.columns) == ["seq", "start", "end", "strand", "score", "rel_score"]
        got = {(r.seq, r.start, r.strand): r.score for r in df.itertuples()}
        assert set(got) == set(expected) and len(got) == len(df) > 10
        assert max(abs(got[k] - expected[k]) for k in got) < 1e-5
        assert (df.end - df.start == 19).all()
        assert {"+", "-"} <= set(df.strand)


def test_planted_sites_found_at_position_and_strand(ctcf):
    rng = np.random.default_rng(2)
    m = pssm(ctcf)
    cons = "".join("ACGT"[j] for j in m.argmax(axis=1))
    seqs = random_seqs(rng, 6, 300, 300)
    planted = [
        (0, 40, "+", cons),
        (1, 200, "-", revcomp(cons)),
        (2, 0, "+", ctcf.sample(rng, 1, 0.3)[0]),
        (3, 281, "-", revcomp(ctcf.sample(rng, 1, 0.3)[0])),
    ]
    for i, p, _, site in planted:
        seqs[i] = seqs[i][:p] + site + seqs[i][p + 19 :]
    assert len(seqs[3]) == 300
    best = (
        hits(seqs, m, frac=0.0, best_strand=True)
        .sort_values("score")
        .groupby("seq")
        .tail(1)
        .set_index("seq")
    )
    lo, hi = score_range(m)
    for i, p, strand, _ in planted:
        assert (best.loc[i, "start"], best.loc[i, "end"], best.loc[i, "strand"]) == (
            p,
            p + 19,
            strand,
        )
        assert best.loc[i, "rel_score"] > 0.8
    assert best.loc[0, "score"] == pytest.approx(hi, abs=1e-5) and best.loc[
        0, "rel_score"
    ] == pytest.approx(1, abs=1e-6)
    assert best.loc[1, "score"] == pytest.approx(hi, abs=1e-5)
    res = scan(seqs, m)
    assert res.strand[1, 200] == -1 and res.strand[0, 40] == 1
    # the reverse complement of the consensus
    assert res.reverse[1, 200] == pytest.approx(hi, abs=1e-5)
    names = [f"s{i}" for i in range(6)]
    named = hits(res, m, frac=0.8, names=names)  # a ScanResult is not scanned again
    assert {(r.seq, r.start, r.strand) for r in named.itertuples()} >= {
        ("s0", 40, "+"),
        ("s1", 200, "-"),
    }


def test_threshold_fraction_semantics(ctcf):
    rng = np.random.default_rng(3)
    m = pssm(ctcf)
    lo, hi = score_range(m)
    assert lo == m.min(axis=1).sum() and hi == m.max(axis=1).sum()
    for f in (0.0, 0.25, 0.8, 1.0):
        assert relative_threshold(m, f) == lo + f * (hi - lo)
    cons = "".join("ACGT"[j] for j in m.argmax(axis=1))
    seqs = random_seqs(rng, 30, 100, 200)
    seqs[4] = seqs[4][:10] + cons + seqs[4][29:]
    res = scan(seqs, m)
    n_sites = int(res.n_sites.sum())
    assert len(hits(res, m, frac=0.0)) == 2 * n_sites  # every site on both strands
    assert len(hits(res, m, frac=0.0, best_strand=True)) == n_sites
    # a ScanResult keeps its strands
    assert len(hits(res, m, frac=0.0, both_strands=False)) == 2 * n_sites
    assert len(hits(seqs, m, frac=0.0, both_strands=False)) == n_sites
    top = hits(res, m, frac=1.0)
    assert list(zip(top.seq, top.start, top.strand)) == [(4, 10, "+")]
    prev = None
    for f in (0.5, 0.7, 0.8, 0.9):
        df = hits(res, m, frac=f)
        thr = lo + f * (hi - lo)
        assert (df.score >= np.float32(thr)).all()
        np.testing.assert_allclose(df.rel_score, (df.score - lo) / (hi - lo))
        assert (df.rel_score >= f - 1e-6).all()
        # the same hits from the absolute threshold, and exactly the sites at or above it
        pd_abs = hits(res, m, threshold=thr)
        assert pd_abs.equals(df)
        assert len(df) == int(
            (res.forward >= np.float32(thr)).sum() + (res.reverse >= np.float32(thr)).sum()
        )
        keys = set(zip(df.seq, df.start, df.strand))
        if prev is not None:
            assert keys <= prev
        prev = keys
    assert hits(res, m, threshold=1e9).empty
    with pytest.raises(SaeflowError, match=r"\[0, 1\]"):
        hits(res, m, frac=1.5)
    # -inf entries: the fraction is undefined, an absolute threshold still works
    m0 = pssm(ctcf, pseudocount=0)
    with pytest.raises(SaeflowError, match="infinite"):
        hits(seqs, m0, frac=0.8)
    assert hits(seqs, m0, threshold=10.0).rel_score.isna().all()


# ----------------------------------------------------------------------------------- tokens


def brute_token_scores(x, offsets, L, fill=-np.inf):
    B, T, _ = offsets.shape
    out = np.full((B, T), fill, np.float64)
    for b in range(B):
        for t in range(T):
            a, e = offsets[b, t]
            vals = [x[b][s] for s in range(len(x[b])) if s < e and s + L > a and e > a]
            if vals:
                out[b, t] = max(vals)
    return out


BPE = np.array(
    [
        # [CLS], variable-length pieces covering 0..40, [SEP], padding
        [
            (0, 0),
            (0, 3),
            (3, 4),
            (4, 10),
            (10, 12),
            (12, 20),
            (20, 21),
            (21, 33),
            (33, 40),
            (0, 0),
            (0, 0),
            (0, 0),
        ],
        [
            (0, 0),
            (0, 1),
            (1, 9),
            (9, 10),
            (10, 11),
            (11, 25),
            (25, 27),
            (27, 29),
            (29, 30),
            (30, 37),
            (37, 52),
            (0, 0),
        ],
    ]
)


@pytest.mark.parametrize("L", [1, 5, 19])
def test_token_scores_bpe_offsets(L):
    rng = np.random.default_rng(L)
    P = 52 - L + 1
    x = rng.normal(size=(2, P)).astype(np.float32)
    x[0, 40 - L + 1 :] = -np.inf  # sequence 0 is 40 bp: no sites past its end
    x[rng.random(x.shape) < 0.1] = -np.inf  # sites with N
    got = token_scores(x, BPE, motif_length=L)
    assert got.shape == (2, 12) and got.dtype == np.float32
    np.testing.assert_array_equal(got, brute_token_scores(x, BPE, L))
    assert np.isneginf(got[:, 0]).all() and np.isneginf(got[0, 9:]).all()  # specials and padding
    # ragged per-sequence arrays give the same, and so does a custom fill
    ragged = [x[0, : 40 - L + 1], x[1]]
    np.testing.assert_array_equal(token_scores(ragged, BPE, motif_length=L), got)
    filled = token_scores(x, BPE, motif_length=L, fill=np.nan)
    assert np.isnan(filled[:, 0]).all() and np.isnan(filled[0, 9:]).all()


def test_token_scores_overlapping_kmers_from_scan(ctcf):
    rng = np.random.default_rng(5)
    m = pssm(ctcf)
    seqs = random_seqs(rng, 3, 60, 90)
    seqs[1] = seqs[1][:20] + "N" + seqs[1][21:]
    res = scan(seqs, m)
    k, T = 6, 100
    offsets = np.zeros((3, T, 2), np.int64)  # [CLS] kmer_0 ... kmer_{n-6} [SEP] pad...
    for i, s in enumerate(seqs):
        n = len(s) - k + 1
        offsets[i, 1 : n + 1, 0] = np.arange(n)
        offsets[i, 1 : n + 1, 1] = np.arange(n) + k
    got = token_scores(res, offsets)
    np.testing.assert_array_equal(
        got, brute_token_scores([site.score for site in res], offsets, 19)
    )
    # a token overlaps a hit at threshold t iff its score is >= t
    thr = relative_threshold(m, 0.5)
    df = hits(res, m, threshold=thr)
    for i in range(3):
        for t in range(T):
            a, e = offsets[i, t]
            covered = (
                any(st < e and en > a for st, en in zip(df[df.seq == i].start, df[df.seq == i].end))
                and e > a
            )
            assert covered == (got[i, t] >= np.float32(thr))


# ----------------------------------------------------------------------------------- errors


def test_errors_name_the_problem(ctcf):
    m = pssm(ctcf)
    with pytest.raises(SaeflowError, match="empty list"):
        scan([], m)
    with pytest.raises(SaeflowError, match="sequence 1 is empty"):
        scan(["ACGT" * 10, ""], m)
    with pytest.raises(SaeflowError, match="single string"):
        scan("ACGT" * 10, m)
    with pytest.raises(SaeflowError, match="sequence 0 is a NoneType"):
        scan([None], m)
    with pytest.raises(SaeflowError, match=r"shape \(L, 4\).*\(19, 3\)"):
        scan(["ACGT" * 10], m[:, :3])
    with pytest.raises(SaeflowError, match=r"shape \(L, 4\)"):
        scan(["ACGT" * 10], m.ravel())
    with pytest.raises(SaeflowError, match="not the Motif"):
        scan(["ACGT" * 10], ctcf)
    bad = m.copy()
    bad[0, 0] = np.nan
    with pytest.raises(SaeflowError, match="NaN"):
        scan(["ACGT" * 10], bad)
    with pytest.raises(SaeflowError, match=r"MA0139.1.*shape"):
        pssm(type(ctcf)(matrix_id=CTCF, name="CTCF", counts=ctcf.counts[:, :3]))
    with pytest.raises(SaeflowError, match=r"count matrix.*>= 0"):
        pssm(-ctcf.counts)
    with pytest.raises(SaeflowError, match="background"):
        pssm(ctcf, background=(0.5, 0.5, 0, 0))
    with pytest.raises(SaeflowError, match="pseudocount"):
        pssm(ctcf, pseudocount=[1, 2])
    with pytest.raises(SaeflowError, match="no counts"):
        pssm(np.zeros((3, 4)), pseudocount=0)
    x = np.zeros((2, 10), np.float32)
    with pytest.raises(SaeflowError, match=r"\(B, T, 2\)"):
        token_scores(x, np.zeros((2, 5)), motif_length=3)
    with pytest.raises(SaeflowError, match="2 sequences, site scores for 1"):
        token_scores(x[:1], np.zeros((2, 5, 2), int), motif_length=3)
    with pytest.raises(SaeflowError, match="negative"):
        token_scores(x, -np.ones((2, 5, 2), int), motif_length=3)
    with pytest.raises(SaeflowError, match="motif_length"):
        token_scores(x, np.zeros((2, 5, 2), int))
    res = scan(["ACGT" * 10], m)
    with pytest.raises(SaeflowError, match="length 19"):
        hits(res, m[:5])
    with pytest.raises(SaeflowError, match="2 names for 1"):
        hits(res, m, names=["a", "b"])

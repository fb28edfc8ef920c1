"""Counterfactual pairs destroy the motif and keep length and
GC; the patching metric and its guard."""

from __future__ import annotations

import numpy as np
import pytest

from saeflow.dna.counterfactual import (
    counterfactual_pairs,
    destroy_motif,
    gc_fraction,
    patching_metric,
)
from saeflow.dna.motifs import load_jaspar
from saeflow.dna.motifscan import hits, pssm, relative_threshold, scan
from saeflow.utils import SaeflowError


@pytest.fixture(scope="module")
def ctcf():
    m = pssm(load_jaspar("MA0139.1"))
    return m, relative_threshold(m, 0.8)


def with_sites(n=30, length=120, seed=0):
    rng = np.random.default_rng(seed)
    motif = load_jaspar("MA0139.1")
    sites = motif.sample(rng, n)
    seqs = []
    for s in sites:
        bg = "".join(rng.choice(list("ACGT"), length))
        at = int(rng.integers(0, length - len(s)))
        seqs.append(bg[:at] + s + bg[at + len(s) :])
    return seqs


def test_pairs_keep_length_and_gc_at_every_position_and_lose_every_site(ctcf):
    m, thr = ctcf
    seqs = with_sites()
    pairs = counterfactual_pairs(seqs, m, thr, seed=1)
    assert len(pairs) >= 25  # sampled sites mostly pass the 80% threshold
    made = pairs.dropna(subset=["corrupted"])
    assert len(made) == len(pairs)
    for r in made.itertuples():
        assert len(r.corrupted) == len(r.clean) and r.gc_corrupted == r.gc_clean
        strong = lambda s: np.isin(list(s), ["G", "C"])  # noqa: E731
        assert (strong(r.clean) == strong(r.corrupted)).all()  # GC class kept at every position
        assert (
            r.clean[: r.start] == r.corrupted[: r.start]
            and r.clean[r.end :] == r.corrupted[r.end :]
        )
        assert r.corrupted_max_score < thr <= r.clean_score
    assert hits(list(made.corrupted), m, threshold=thr).empty
    assert gc_fraction("GGCA") == 0.75


def test_a_palindrome_needs_the_shuffle_and_is_still_destroyed():
    # a matrix that only looks at GC class (A = T, C = G in every column): complementing the site,
    # or
    # any shuffle that keeps GC at every position, leaves its score unchanged
    counts = np.array(
        [
            [10, 0, 0, 10],
            [10, 0, 0, 10],
            [0, 10, 10, 0],
            [0, 10, 10, 0],
            [10, 0, 0, 10],
            [10, 0, 0, 10],
        ],
        float,
    )
    m = pssm(counts)
    thr = relative_threshold(m, 0.9)
    seq = "GGGG" + "ATCGAT" + "GGGG"
    assert scan([seq], m)[0].score.max() >= thr
    # complementing keeps the class pattern WS SW... and this matrix only looks at classes: no
    # variant that keeps GC per position can escape, and the function says so instead of cheating
    assert destroy_motif(seq, 4, 10, m, thr, max_tries=50) is None
    # a matrix that cares about identity is escaped by the shuffle
    counts2 = np.array(
        [[10, 0, 0, 0], [0, 0, 0, 10], [0, 10, 0, 0], [0, 0, 10, 0], [10, 0, 0, 0], [0, 0, 0, 10]],
        float,
    )
    m2 = pssm(counts2)
    thr2 = relative_threshold(m2, 0.9)
    c = destroy_motif(seq, 4, 10, m2, thr2, seed=3)
    assert (
        c is not None and scan([c], m2)[0].score.max() < thr2 and gc_fraction(c) == gc_fraction(seq)
    )
    with pytest.raises(SaeflowError, match="outside a sequence"):
        destroy_motif(seq, 10, 30, m2, thr2)


def test_patching_metric_and_its_small_denominator_guard():
    clean = np.array([2.0, 1.0, 0.5, 3.0])
    corrupted = np.array([0.0, 0.0, 0.4999, 1.0])
    patched = np.array([[1.0, 1.0, 0.5, 1.0], [2.0, 0.0, 0.0, 2.0]])  # two components x four pairs
    pm, small = patching_metric(patched, corrupted, clean, min_gap=1e-3)
    assert small == 1 and np.isnan(pm[:, 2]).all()
    np.testing.assert_allclose(pm[0, [0, 1, 3]], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(pm[1, [0, 1, 3]], [1.0, 0.0, 0.5])
    with pytest.raises(SaeflowError, match="same shape"):
        patching_metric(patched, corrupted[:3], clean)
    with pytest.raises(SaeflowError, match="NaN or inf"):
        patching_metric(np.array([np.nan]), np.array([0.0]), np.array([1.0]))


def test_an_extra_condition_on_the_corrupted_copy_is_honoured(ctcf):
    """The patching rule asks that the corrupted copy tokenise to the same spans (BPE); any
    condition works."""
    m, thr = ctcf
    seqs = with_sites(n=10)
    plain = counterfactual_pairs(seqs, m, thr, seed=1)
    # refuse the plain answer (the complemented site where that suffices): another GC-keeping
    # variant is drawn
    seen = []

    def accept(clean, corrupted, start, end):
        seen.append(clean)
        assert clean[:start] == corrupted[:start] and end - start == 19  # MA0139.1 is 19 bp
        return corrupted not in set(plain.corrupted)

    picky = counterfactual_pairs(seqs, m, thr, seed=1, accept=accept)
    assert set(seen) <= set(seqs) and len(picky) == len(plain)
    made = picky.dropna(subset=["corrupted"])
    assert len(made) >= len(plain) - 1 and not set(made.corrupted) & set(plain.corrupted)
    for r in made.itertuples():
        assert r.gc_corrupted == r.gc_clean and r.corrupted_max_score < thr
    # a condition nothing meets: no pair, not a wrong one
    none = counterfactual_pairs(seqs[:3], m, thr, seed=1, accept=lambda *a: False)
    assert none.corrupted.isna().all()

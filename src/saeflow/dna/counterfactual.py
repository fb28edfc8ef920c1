"""Counterfactual pairs for activation patching, and the patching metric.

:func:`destroy_motif` turns a sequence with a motif site into its "corrupted" partner: same length,
same GC content (in fact the same GC at every position), no site left at or above the threshold
anywhere in the sequence on either strand. The site's bases are **complemented in place** (A<->T,
C<->G, not reversed): every position keeps its GC/AT class, and the site becomes the motif's
complement, which is neither the motif nor its reverse complement. When that is not enough (a
palindromic core, or a new site created nearby), the within-class bases of the site are shuffled
(seeded: G/C positions among themselves, A/T positions among themselves, so GC is still kept at
every position) until no site passes, up to ``max_tries``; a pair that cannot be made is reported,
not forced.

:func:`patching_metric` is PM = (patched - corrupted) / (clean - corrupted), the fraction of the
clean-vs-corrupted difference that patching one component restores; pairs whose denominator is
smaller than ``min_gap`` (the model barely tells the two apart) get NaN instead of a ratio that
explodes, and the number of such pairs is reported.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from saeflow.dna.sequence import gc_fraction
from saeflow.utils import SaeflowError

_COMPLEMENT = str.maketrans("ACGTacgt", "TGCAtgca")


def _max_site(seq: str, matrix) -> float:
    from saeflow.dna.motifscan import scan

    r = scan([seq], matrix)[0]
    return float(r.score.max()) if len(r.score) else -np.inf


def destroy_motif(
    seq: str,
    start: int,
    end: int,
    matrix,
    threshold: float,
    *,
    seed: int = 0,
    max_tries: int = 200,
    accept=None,
) -> str | None:
    """The corrupted partner of ``seq`` with the site ``[start, end)`` destroyed (see the module
    docstring), or None when no variant within ``max_tries`` clears every site below ``threshold``
    (and, given ``accept(candidate) -> bool``, is accepted by it: e.g. tokenises to the same spans
    as ``seq`` under a BPE tokeniser, so that patching position by position stays meaningful)."""
    ok = (lambda c: True) if accept is None else accept
    if not (0 <= start < end <= len(seq)):
        raise SaeflowError(f"site [{start}, {end}) outside a sequence of length {len(seq)}")
    site = seq[start:end]
    cand = seq[:start] + site.translate(_COMPLEMENT) + seq[end:]
    if _max_site(cand, matrix) < threshold and ok(cand):
        return cand
    rng = np.random.default_rng(seed)
    chars = np.array(list(site.translate(_COMPLEMENT)))
    up = np.char.upper(chars)
    strong = np.flatnonzero(np.isin(up, ["G", "C"]))
    weak = np.flatnonzero(np.isin(up, ["A", "T"]))
    for _ in range(max_tries):
        new = chars.copy()
        # re-draw each class's bases at its own positions: GC stays the same at every position
        new[strong] = rng.choice(np.array(["G", "C"]), len(strong))
        new[weak] = rng.choice(np.array(["A", "T"]), len(weak))
        cand = seq[:start] + "".join(new) + seq[end:]
        if _max_site(cand, matrix) < threshold and ok(cand):
            return cand
    return None


def counterfactual_pairs(
    seqs, matrix, threshold: float, *, names=None, seed: int = 0, accept=None
) -> pd.DataFrame:
    """For each sequence with at least one site >= ``threshold``: its best site destroyed
    (``accept(clean, corrupted, start, end) -> bool``: an extra condition on the corrupted copy, see
    :func:`destroy_motif`).

    Returns name, clean, corrupted (None when it could not be made), start, end, clean_score,
    corrupted_max_score, gc_clean, gc_corrupted.
    """
    from saeflow.dna.motifscan import scan

    seqs = list(seqs)
    names = list(range(len(seqs))) if names is None else list(names)
    res = scan(seqs, matrix)
    L = res.motif_length
    rows = []
    for i, s in enumerate(seqs):
        sc = res[i].score
        if not len(sc) or sc.max() < threshold:
            continue
        st = int(np.argmax(sc))
        c = destroy_motif(
            s,
            st,
            st + L,
            matrix,
            threshold,
            seed=seed + i,
            accept=None if accept is None else (lambda x, s=s, st=st: accept(s, x, st, st + L)),
        )
        rows.append(
            dict(
                name=names[i],
                clean=s,
                corrupted=c,
                start=st,
                end=st + L,
                clean_score=float(sc.max()),
                corrupted_max_score=_max_site(c, matrix) if c is not None else np.nan,
                gc_clean=gc_fraction(s),
                gc_corrupted=gc_fraction(c) if c is not None else np.nan,
            )
        )
    return pd.DataFrame(
        rows,
        columns=[
            "name",
            "clean",
            "corrupted",
            "start",
            "end",
            "clean_score",
            "corrupted_max_score",
            "gc_clean",
            "gc_corrupted",
        ],
    )


def patching_metric(patched, corrupted, clean, *, min_gap: float = 1e-3) -> tuple[np.ndarray, int]:
    """PM = (patched - corrupted) / (clean - corrupted), NaN where |clean - corrupted| <
    ``min_gap``.

    Broadcasts (e.g. patched of shape (layers, heads, pairs) against clean/corrupted of shape
    (pairs,)). Returns (PM, number of pairs below the gap).
    """
    patched = np.asarray(patched, dtype=np.float64)
    corrupted = np.asarray(corrupted, dtype=np.float64)
    clean = np.asarray(clean, dtype=np.float64)
    if clean.shape != corrupted.shape:
        raise SaeflowError(
            f"clean {clean.shape} and corrupted {corrupted.shape} must have the same shape"
        )
    if not (
        np.isfinite(patched).all() and np.isfinite(clean).all() and np.isfinite(corrupted).all()
    ):
        raise SaeflowError("NaN or inf among the model outputs given to the patching metric")
    gap = clean - corrupted
    small = np.abs(gap) < min_gap
    with np.errstate(invalid="ignore", divide="ignore"):
        pm = np.where(small, np.nan, (patched - corrupted) / np.where(small, 1.0, gap))
    return pm, int(small.sum())

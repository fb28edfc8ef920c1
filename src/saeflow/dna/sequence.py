"""Base composition of DNA sequences: the one GC-content implementation.

Policy: GC content is case-insensitive (soft-masked, lower-case bases count: ``g``/``c`` as
``G``/``C``); the denominator is every base of the span, ``N`` and other letters included; an
empty sequence or span has no GC content (NaN).
"""

from __future__ import annotations

import numpy as np

_GC = np.zeros(256, dtype=bool)
_GC[[ord("G"), ord("C"), ord("g"), ord("c")]] = True


def token_gc(seqs, seq_index, start, end) -> np.ndarray:
    """GC fraction of each span ``seqs[seq_index][start:end]`` (NaN for empty spans), vectorised.

    Spans are clipped to their sequence's end.
    """
    seqs = [str(s) for s in seqs]
    seq_index = np.asarray(seq_index, dtype=np.int64)
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    base0 = np.concatenate([[0], np.cumsum(lengths)])
    allb = np.frombuffer("".join(seqs).encode("ascii", "replace"), dtype=np.uint8)
    cum = np.concatenate([[0], np.cumsum(_GC[allb], dtype=np.int64)])
    if len(seq_index) == 0:
        return np.zeros(0)
    n = lengths[seq_index]
    s = np.clip(np.asarray(start, dtype=np.int64), 0, n) + base0[seq_index]
    e = np.clip(np.asarray(end, dtype=np.int64), 0, n) + base0[seq_index]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(e > s, (cum[e] - cum[s]) / np.maximum(e - s, 1), np.nan)


def gc_content(seqs) -> np.ndarray:
    """GC fraction of each whole sequence in ``seqs`` (NaN for an empty one)."""
    seqs = [str(s) for s in seqs]
    n = np.array([len(s) for s in seqs], dtype=np.int64)
    return token_gc(seqs, np.arange(len(seqs)), np.zeros(len(seqs), np.int64), n)


def gc_fraction(seq: str) -> float:
    """GC fraction of one sequence (NaN if empty)."""
    return float(gc_content([seq])[0])

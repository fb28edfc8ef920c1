"""Fast PSSM scanning of many DNA sequences, hit calling, and motif evidence per token.

Conventions (all checked against Biopython's ``Bio.motifs`` in ``tests/dna/test_motifscan.py``):

* :func:`pssm` is ``Bio.motifs``' ``counts.normalize(pseudocounts=p).log_odds(background)``:
  ``p`` is added to **every letter** of every column, columns are renormalised, and the PSSM is
  ``log2(prob / background)`` with the background renormalised to sum 1. The default ``p = 0.8``
  keeps zero counts finite (a single ``-inf`` entry would veto every site with that base and make
  the score range, hence relative thresholds, infinite) while changing JASPAR's count matrices
  (hundreds of sites per column) very little. Biopython's own default is no pseudocount; some tools
  spread one total pseudocount over the bases by the background instead: pass
  ``pseudocount=total * np.asarray(background)`` to get that.
* The score of the site starting at base ``s`` (0-based) on the forward strand is
  ``sum_j pssm[j, seq[s + j]]`` (``Bio.motifs`` ``pssm.calculate(seq)[s]``); on the reverse strand
  it is the score of the reverse complement of ``seq[s:s+L]``, i.e. the reverse-complemented PSSM
  applied at the same start (``pssm.reverse_complement().calculate(seq)[s]``). Every site covers
  the forward-strand bases ``[s, s + L)`` whatever its strand. ``Bio.motifs`` ``search`` reports a
  reverse-strand hit at ``s - len(seq)`` (a negative number); here it is ``start = s`` with
  ``strand = "-"``.
* Letters are case-insensitive (soft-masked ``acgt`` score like ``ACGT``). A window that contains
  any other letter (``N``, IUPAC ambiguity codes, ``U``, ``-``, non-ASCII) scores ``-inf`` on both
  strands (Biopython gives NaN; both are never hits). Scores are float32, like Biopython's, summed
  in float64 first.
* Relative thresholds: ``threshold = min_score + frac * (max_score - min_score)`` where
  ``min_score``/``max_score`` are the lowest/highest scores any sequence can reach (sum over
  columns of the column minimum/maximum: Biopython's ``pssm.min``/``pssm.max``; the same for both
  strands). A hit is a site with ``score >= threshold`` (compared in float32, as Biopython's
  ``search``), and its ``rel_score = (score - min_score) / (max_score - min_score)``. This is the
  "80%"-style relative score of the TFBS Perl modules / TFBSTools ``searchSeq(min.score="80%")``,
  not a p-value threshold like MEME's FIMO.

Speed: instead of L gathers per site, the sequence is encoded as overlapping k-mers (k <= 8, with
``ceil(L / k)`` blocks covering the motif) and each block's partial scores come from a 4**k table,
so a site costs ``ceil(L / 8)`` table lookups per strand (3 for CTCF's 19 columns).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd

from saeflow.dna.motifs import Motif
from saeflow.utils import SaeflowError

BASES = "ACGT"
_MAX_K = 8
_INVALID = 4
_CODE = bytearray([_INVALID] * 256)
for _i, _b in enumerate(b"ACGT"):
    _CODE[_b] = _i
    _CODE[_b + 32] = _i  # lower case
_CODE = bytes(_CODE)


# --------------------------------------------------------------------------------------- PSSM


def pssm(
    motif: Motif | np.ndarray,
    pseudocount: float | Sequence[float] = 0.8,
    background: Sequence[float] = (0.25, 0.25, 0.25, 0.25),
) -> np.ndarray:
    """(L, 4) log2-odds matrix in ACGT order from a :class:`~saeflow.dna.motifs.Motif` or (L, 4)
    counts.

    ``pseudocount`` is added to each letter of each column (a number, or 4 numbers in ACGT order,
    like Biopython's ``normalize(pseudocounts=...)``); ``background`` (ACGT) is renormalised to sum
    1. Entries with probability 0 (only possible with a zero pseudocount) are ``-inf``.
    """
    counts = motif.counts if isinstance(motif, Motif) else motif
    name = motif.matrix_id if isinstance(motif, Motif) else "count matrix"
    try:
        counts = np.asarray(counts, dtype=float)
    except (TypeError, ValueError) as e:
        raise SaeflowError(f"{name}: counts are not numeric ({e})") from None
    if counts.ndim != 2 or counts.shape[1] != 4 or counts.shape[0] == 0:
        raise SaeflowError(
            f"{name}: counts must have shape (L, 4) in ACGT order with L >= 1, got {counts.shape}"
        )
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise SaeflowError(f"{name}: counts must be finite and >= 0")
    try:
        pc = np.asarray(pseudocount, dtype=float)
    except (TypeError, ValueError):
        pc = np.full(1, np.nan)
    if pc.shape not in ((), (4,)) or not np.isfinite(pc).all() or (pc < 0).any():
        raise SaeflowError(
            f"{name}: pseudocount must be a number >= 0 or 4 of them (ACGT), got {pseudocount!r}"
        )
    bg = np.asarray(background, dtype=float)
    if bg.shape != (4,) or not np.isfinite(bg).all() or (bg <= 0).any():
        raise SaeflowError(
            f"{name}: background must be 4 positive numbers (ACGT), got {background!r}"
        )
    bg = bg / bg.sum()
    c = counts + pc
    total = c.sum(axis=1, keepdims=True)
    if (total <= 0).any():
        rows = np.flatnonzero(total[:, 0] <= 0).tolist()
        raise SaeflowError(f"{name}: column(s) {rows} have no counts and no pseudocount")
    with np.errstate(divide="ignore"):
        return np.log2((c / total) / bg)


def _check_pssm(matrix) -> np.ndarray:
    if isinstance(matrix, Motif):
        raise SaeflowError(
            f"pass a log-odds matrix, e.g. pssm({matrix.matrix_id!r} motif), not the Motif itself"
        )
    try:
        m = np.asarray(matrix, dtype=float)
    except (TypeError, ValueError) as e:
        raise SaeflowError(f"PSSM is not a numeric matrix ({e})") from None
    if m.ndim != 2 or m.shape[1] != 4 or m.shape[0] == 0:
        raise SaeflowError(f"PSSM must have shape (L, 4) in ACGT order with L >= 1, got {m.shape}")
    if np.isnan(m).any() or (m == np.inf).any():
        raise SaeflowError("PSSM has NaN or +inf entries (zero background probability?)")
    return m


def score_range(matrix) -> tuple[float, float]:
    """(min_score, max_score): the lowest and highest score any site can get (Biopython
    ``pssm.min``/``.max``)."""
    m = _check_pssm(matrix)
    return float(m.min(axis=1).sum()), float(m.max(axis=1).sum())


def relative_threshold(matrix, frac: float) -> float:
    """``min_score + frac * (max_score - min_score)``; ``frac`` in [0, 1]."""
    if not 0.0 <= frac <= 1.0:
        raise SaeflowError(f"relative threshold must be in [0, 1], got {frac}")
    lo, hi = score_range(matrix)
    if not np.isfinite(lo):
        raise SaeflowError(
            "PSSM has -inf entries, so the score range is infinite: use a pseudocount > 0 "
            "or an absolute threshold"
        )
    return lo + frac * (hi - lo)


# --------------------------------------------------------------------------------------- scanning


class SiteScores(NamedTuple):
    """One sequence's sites, one entry per start position ``0 .. len(seq) - L``."""

    score: np.ndarray  # float32, max over strands (forward only if one strand was scanned)
    # int8: +1 forward, -1 reverse (reverse only when strictly higher), 0 if -inf
    strand: np.ndarray
    forward: np.ndarray
    reverse: np.ndarray | None


@dataclass
class ScanResult:
    """Site scores of N sequences, padded to ``P = max_len - L + 1`` start positions.

    ``forward``/``reverse`` are (N, P) float32; position ``s`` of row ``i`` is the site covering
    bases ``[s, s + L)`` of sequence ``i``, ``-inf`` beyond ``n_sites[i]`` and for windows with a
    non-ACGT letter. ``reverse`` is None when only the forward strand was scanned. Indexing
    (``result[i]``) or iterating gives each sequence's :class:`SiteScores` trimmed to its length.
    """

    forward: np.ndarray
    reverse: np.ndarray | None
    lengths: np.ndarray  # (N,) sequence lengths
    motif_length: int
    _score: np.ndarray | None = field(default=None, repr=False)
    _strand: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_sites(self) -> np.ndarray:
        return np.maximum(self.lengths - self.motif_length + 1, 0)

    @property
    def score(self) -> np.ndarray:
        """(N, P) float32: max over strands."""
        if self._score is None:
            self._score = (
                self.forward if self.reverse is None else np.maximum(self.forward, self.reverse)
            )
        return self._score

    @property
    def strand(self) -> np.ndarray:
        """(N, P) int8: +1 where forward >= reverse, -1 where the reverse is higher, 0 where both
        are -inf."""
        if self._strand is None:
            s = np.ones(self.forward.shape, np.int8)
            if self.reverse is not None:
                s[self.reverse > self.forward] = -1
            s[self.score == -np.inf] = 0
            self._strand = s
        return self._strand

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> SiteScores:
        n = int(self.n_sites[i])
        rev = None if self.reverse is None else self.reverse[i, :n]
        return SiteScores(self.score[i, :n], self.strand[i, :n], self.forward[i, :n], rev)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _encode(seqs) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated base codes (uint8: 0..3 = ACGT, 4 = anything else) and the lengths."""
    if isinstance(seqs, (str, bytes)):
        raise SaeflowError(
            "scan() takes a list of sequences, got a single string (wrap it in a list)"
        )
    seqs = list(seqs)
    if not seqs:
        raise SaeflowError("no sequences to scan (empty list)")
    parts = []
    for i, s in enumerate(seqs):
        if isinstance(s, str):
            s = s.encode("ascii", "replace")  # one '?' (invalid) per non-ASCII character
        elif not isinstance(s, (bytes, bytearray)):
            raise SaeflowError(f"sequence {i} is a {type(s).__name__}, not a str")
        if not s:
            raise SaeflowError(f"sequence {i} is empty")
        parts.append(bytes(s))
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    codes = np.frombuffer(b"".join(parts).translate(_CODE), dtype=np.uint8)
    return codes, lengths


def _block_tables(m: np.ndarray) -> tuple[int, list[int], list[np.ndarray]]:
    """k, block offsets and one 4**k partial-score table per block (overlapping blocks count each
    column once)."""
    L = m.shape[0]
    nblocks = -(-L // _MAX_K)
    k = -(-L // nblocks)
    offsets = [min(b * k, L - k) for b in range(nblocks)]
    tables, covered = [], 0
    for o in offsets:
        t = np.zeros(1)
        for c in range(o, o + k):  # first base of the k-mer = highest bits of its index
            # the last block may overlap the previous one: its already covered columns add 0
            t = (t[:, None] + (m[c] if c >= covered else np.zeros(4))[None, :]).ravel()
        tables.append(t)
        covered = o + k
    return k, offsets, tables


def _kmers(codes: np.ndarray, k: int) -> np.ndarray:
    """Index of the k-mer starting at every position (``len(codes) - k + 1`` of them), as intp."""
    n = len(codes) - k + 1
    km = codes[:n].astype(np.uint16)  # k <= 8: 4**8 - 1 fits
    for j in range(1, k):
        km <<= 2
        km |= codes[j : j + n]
    return km.astype(np.intp)


def scan(
    seqs: Sequence[str], matrix, both_strands: bool = True, chunk_positions: int = 1 << 16
) -> ScanResult:
    """Score every site of every sequence with the (L, 4) PSSM ``matrix`` (from :func:`pssm`).

    Sequences may differ in length; ones shorter than the motif have no sites. Rows are processed
    in chunks of about ``chunk_positions`` bases (whole sequences, at least one): small enough for
    the temporaries (~40 bytes per base) to stay in cache; the result does not depend on it.
    """
    m = _check_pssm(matrix)
    L = m.shape[0]
    codes, lengths = _encode(seqs)
    N, width = len(lengths), int(lengths.max())
    P = max(width - L + 1, 0)
    fwd = np.empty((N, P), np.float32)  # every row is written below
    rev = np.empty((N, P), np.float32) if both_strands else None
    if P == 0:
        return ScanResult(fwd, rev, lengths, L)

    if (lengths == width).all():
        padded = codes.reshape(N, width)
    else:  # pad with A: the sites that reach into the padding are set to -inf below
        padded = np.zeros((N, width), np.uint8)
        padded[np.arange(width)[None, :] < lengths[:, None]] = codes
    invalid = (codes == _INVALID).any()

    k, offsets, tables = _block_tables(m)
    strands = [(tables, fwd)]
    if both_strands:
        # reverse complement: ACGT -> TGCA, columns reversed
        strands.append((_block_tables(m[::-1, ::-1])[2], rev))
    rows_per_chunk = max(1, chunk_positions // width)
    tail = np.zeros(L - 1, np.uint8)
    for r0 in range(0, N, rows_per_chunk):
        r1 = min(N, r0 + rows_per_chunk)
        # windows past a row's end are dropped below
        flat = np.concatenate([padded[r0:r1].ravel(), tail])
        n = (r1 - r0) * width
        if invalid:
            bad = flat == _INVALID
            flat = np.where(bad, 0, flat).astype(np.uint8)
            nbad = np.concatenate([[0], np.cumsum(bad, dtype=np.int32)])
            window_bad = (nbad[L : L + n] - nbad[:n] > 0).reshape(r1 - r0, width)[:, :P]
        km = _kmers(flat, k)
        for tabs, out in strands:
            acc = np.take(tabs[0], km[offsets[0] : offsets[0] + n])
            for tab, o in zip(tabs[1:], offsets[1:]):
                acc += np.take(tab, km[o : o + n])
            block = out[r0:r1]
            block[:] = acc.reshape(r1 - r0, width)[:, :P]
            if invalid:
                block[window_bad] = -np.inf
    if not (lengths == width).all():
        beyond = np.arange(P)[None, :] >= np.maximum(lengths - L + 1, 0)[:, None]
        for out in (fwd, rev):
            if out is not None:
                out[beyond] = -np.inf
    return ScanResult(fwd, rev, lengths, L)


def hits(
    seqs: Sequence[str] | ScanResult,
    matrix,
    frac: float = 0.8,
    threshold: float | None = None,
    both_strands: bool = True,
    best_strand: bool = False,
    names: Sequence | None = None,
) -> pd.DataFrame:
    """Sites scoring at least the threshold, as a DataFrame (seq, start, end, strand, score,
    rel_score).

    The threshold is ``threshold`` if given, else ``min_score + frac * (max_score - min_score)``
    (see the module docstring). ``seqs`` may be a :class:`ScanResult` of the same ``matrix`` to
    avoid a second scan (its strands are used; ``both_strands`` is then ignored). With both strands
    every (site, strand) at or above the threshold is a row, like Biopython's ``search`` (a
    palindromic site can be a hit on both); ``best_strand=True`` keeps only the higher strand of
    each site (forward on ties). ``seq`` is the sequence's index, or its entry of ``names``; ``end =
    start + L`` (half-open, forward-strand coordinates for both strands). Rows are sorted by seq,
    start, then strand (+ first)."""
    m = _check_pssm(matrix)
    lo, hi = score_range(m)
    thr = relative_threshold(m, frac) if threshold is None else float(threshold)
    res = seqs if isinstance(seqs, ScanResult) else scan(seqs, m, both_strands=both_strands)
    if res.motif_length != m.shape[0]:
        raise SaeflowError(
            f"the ScanResult is for a motif of length {res.motif_length}, the PSSM has {m.shape[0]}"
        )
    if names is not None and len(names) != len(res):
        raise SaeflowError(f"{len(names)} names for {len(res)} sequences")
    if best_strand or res.reverse is None:
        per_strand = [(res.score, res.strand)]
    else:
        per_strand = [(res.forward, 1), (res.reverse, -1)]
    cols: dict[str, list] = {"seq": [], "start": [], "strand": [], "score": []}
    t32 = np.float32(thr)
    for scores, strand in per_strand:
        mask = scores >= t32
        if t32 == -np.inf:
            mask &= scores > -np.inf
        i, s = np.divmod(np.flatnonzero(mask), max(scores.shape[1], 1))
        cols["seq"].append(i)
        cols["start"].append(s)
        cols["strand"].append(
            strand[i, s] if isinstance(strand, np.ndarray) else np.full(len(i), strand, np.int8)
        )
        cols["score"].append(scores[i, s])
    seq = np.concatenate(cols["seq"])
    start = np.concatenate(cols["start"])
    strand = np.concatenate(cols["strand"]).astype(np.int8)
    score = np.concatenate(cols["score"]).astype(np.float64)
    order = np.lexsort((-strand, start, seq))
    seq, start, strand, score = seq[order], start[order], strand[order], score[order]
    rel = (score - lo) / (hi - lo) if np.isfinite(lo) and hi > lo else np.full(len(score), np.nan)
    return pd.DataFrame(
        {
            "seq": np.asarray(names, dtype=object)[seq]
            if names is not None
            else seq.astype(np.int64),
            "start": start.astype(np.int64),
            "end": start.astype(np.int64) + m.shape[0],
            "strand": np.where(strand > 0, "+", "-"),
            "score": score,
            "rel_score": rel,
        }
    )


# --------------------------------------------------------------------------------------- tokens


def _pad_rows(rows) -> np.ndarray:
    rows = [np.asarray(r, dtype=np.float32) for r in rows]
    if any(r.ndim != 1 for r in rows):
        raise SaeflowError("site scores must be one 1-D array per sequence")
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), -np.inf, np.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def token_scores(
    site_scores: np.ndarray | Sequence[np.ndarray] | ScanResult,
    offsets: np.ndarray,
    motif_length: int | None = None,
    fill: float = -np.inf,
) -> np.ndarray:
    """Motif evidence per token: the max score of the sites overlapping each token's bases.

    ``site_scores``: (B, P) scores by site start (``site_scores[b, s]`` covers bases
    ``[s, s + motif_length)`` of sequence b; ``-inf`` = no site), a list of 1-D arrays, or a
    :class:`ScanResult` (its max-over-strands ``score`` and ``motif_length``). ``offsets``: (B, T,
    2) integer base spans ``[start, end)`` per token, as a tokenizer's ``return_offsets_mapping``
    gives; a token with ``end <= start`` (special tokens are ``(0, 0)``) overlaps nothing and gets
    ``fill``. A site starting at s overlaps token [a, b) iff ``s < b`` and ``s + L > a``, so tokens
    of any width work (BPE pieces, overlapping k-mers). Returns (B, T) in the scores' float dtype
    (float32 from a ScanResult); a token overlaps a hit at threshold t iff its score is >= t. Uses a
    sparse table of range maxima: about ``log2(widest token + L) * B * P`` floats of memory.
    """
    if isinstance(site_scores, ScanResult):
        if motif_length not in (None, site_scores.motif_length):
            raise SaeflowError(
                f"motif_length={motif_length} but the ScanResult is for motif length "
                f"{site_scores.motif_length}"
            )
        motif_length, x = site_scores.motif_length, site_scores.score
    elif isinstance(site_scores, np.ndarray):
        x = site_scores if site_scores.dtype.kind == "f" else site_scores.astype(np.float32)
        if x.ndim != 2:
            raise SaeflowError(f"site scores must be (B, P), got shape {x.shape}")
    else:
        x = _pad_rows(site_scores)
    if motif_length is None or int(motif_length) < 1:
        raise SaeflowError(f"motif_length must be a positive integer, got {motif_length!r}")
    L = int(motif_length)
    off = np.asarray(offsets)
    if off.ndim != 3 or off.shape[2] != 2:
        raise SaeflowError(f"offsets must have shape (B, T, 2), got {off.shape}")
    if not np.issubdtype(off.dtype, np.integer):
        if not (np.isfinite(off).all() and (off == np.round(off)).all()):
            raise SaeflowError("offsets must be integers")
        off = off.astype(np.int64)
    if off.shape[0] != x.shape[0]:
        raise SaeflowError(
            f"offsets are for {off.shape[0]} sequences, site scores for {x.shape[0]}"
        )
    a, b = off[..., 0].astype(np.int64), off[..., 1].astype(np.int64)
    if (a < 0).any():
        raise SaeflowError("offsets have negative starts")
    B, P = x.shape
    out = np.full(a.shape, fill, x.dtype)
    lo = np.maximum(a - L + 1, 0)
    hi = np.minimum(b - 1, P - 1)  # inclusive
    ok = (b > a) & (lo <= hi)
    if not ok.any():
        return out
    # sparse table of range maxima: level j holds max(x[:, i : i + 2**j])
    span = hi - lo + 1
    levels = int(span[ok].max()).bit_length()
    table = np.full((levels, B, P), -np.inf, x.dtype)
    table[0] = x
    for j in range(1, levels):
        h = 1 << (j - 1)
        np.maximum(table[j - 1][:, : P - h], table[j - 1][:, h:], out=table[j][:, : P - h])
    bi = np.broadcast_to(np.arange(B)[:, None], a.shape)[ok]
    left, r = lo[ok], hi[ok]
    j = np.frexp(span[ok].astype(np.float64))[1] - 1  # floor(log2(span))
    out[ok] = np.maximum(table[j, bi, left], table[j, bi, r - (1 << j) + 1])
    return out

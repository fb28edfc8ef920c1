"""CTCF-style attention-head scans: does a head attend to motif tokens more than to matched
background?

Inputs per layer: attention probabilities ``attn`` (B, H, T, T: batch, heads, query, key), the
motif evidence of each token ``motif`` (B, T; e.g. :func:`saeflow.dna.motifscan.token_scores`, the
best site score overlapping the token, ``-inf`` where no site overlaps) and a mask of the real
tokens ``valid`` (B, T; False for padding and special tokens).

For every head two registered statistics (as in the seed's CTCF analysis):

* **QK correlation** ``r``: Pearson correlation, over all valid tokens of all sequences, between the
  attention a token *receives* (mean over the valid queries of its sequence, so a row of the
  attention matrix sums to one and long sequences are not favoured) and the token's motif score
  (``-inf`` / missing scores are replaced by the lowest finite score of the batch, i.e. "no
  site"). Two-sided p from the t distribution with n - 2 degrees of freedom
  (``scipy.stats.pearsonr``
  semantics); the tokens of one sequence are not independent, so ``p`` is optimistic and the
  criterion also demands the effect size. ``q``: Benjamini-Hochberg q-value of ``p``
  (:func:`saeflow.stats.bh`) over the whole family, i.e. every layer x head x motif of one
  head-scan table (NaN p = not tested). Criterion: ``r >= r_min`` (0.5) and ``q < alpha`` (0.05);
  ``p`` is kept.
* **Matched attention enrichment** ``rho``: mean attention received by motif tokens (score >=
  ``threshold``) divided by the mean attention received by background tokens matched to them in GC
  content: the background tokens are sampled (seeded) within each GC bin to the motif tokens' GC
  histogram, so a head that merely prefers GC-rich tokens does not pass. Criterion: ``rho >=
  rho_min`` (2). A percentile bootstrap CI over sequences (resampling whole sequences) goes with it.

``scan_heads`` returns one row per (layer, head) with both statistics and ``passes`` (both
criteria), its q-values corrected over the heads of that call. A caller that scans layer by layer
(or motif by motif) and concatenates the tables must apply :func:`head_criteria` to the whole table,
so ``q`` and ``passes`` are over the whole family: :func:`scan_table` does (every motif x layer;
it is what :func:`saeflow.dna.evidence.head_scan` calls).
:func:`heatmap_tables` pivots them for the report's heatmaps.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from saeflow.stats import bh, percentile_ci
from saeflow.utils import SaeflowError

R_MIN, RHO_MIN, ALPHA = 0.5, 2.0, 0.05


def _check(attn, motif, valid, gc):
    attn = np.asarray(attn, dtype=np.float64)
    if attn.ndim != 4 or attn.shape[2] != attn.shape[3]:
        raise SaeflowError(
            f"attention must be (batch, heads, query, key) with query == key, got {attn.shape}"
        )
    B, _, T, _ = attn.shape
    motif = np.asarray(motif, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    gc = np.asarray(gc, dtype=np.float64)
    for name, a in (("motif scores", motif), ("valid mask", valid), ("GC per token", gc)):
        if a.shape != (B, T):
            raise SaeflowError(f"{name} must be (batch, tokens) = {(B, T)}, got {a.shape}")
    if np.isnan(attn).any():
        raise SaeflowError("NaN in the attention probabilities")
    if not valid.any():
        raise SaeflowError("no valid token")
    return attn, motif, valid, gc


def received_attention(attn: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(B, H, T): attention each key token receives, averaged over the valid queries of its
    sequence."""
    q = valid[:, None, :, None].astype(np.float64)
    n = np.maximum(valid.sum(1), 1)[:, None, None]
    return (attn * q).sum(axis=2) / n


def _pearson(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row Pearson r of x (H, n) with y (n,), and its two-sided t-test p."""
    from scipy.stats import t as tdist

    n = y.size
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean()
    den = np.sqrt((xc**2).sum(1) * (yc**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, (xc @ yc) / den, np.nan)
        r = np.clip(r, -1.0, 1.0)
        tstat = r * np.sqrt((n - 2) / np.maximum(1 - r**2, 1e-300))
    p = np.where(np.isfinite(r), 2 * tdist.sf(np.abs(tstat), n - 2), np.nan)
    return r, p


def gc_matched_background(
    gc: np.ndarray,
    is_motif: np.ndarray,
    candidates: np.ndarray,
    *,
    bins: int = 10,
    per_motif: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """Indices (into the flat token arrays) of background tokens whose GC histogram matches the
    motif tokens': within each GC bin (quantile edges of all candidate and motif tokens),
    ``per_motif`` background tokens per motif token are drawn without replacement (fewer when the
    bin runs out)."""
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(candidates & ~is_motif)
    mot = np.flatnonzero(is_motif)
    if len(mot) == 0 or len(pool) == 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.unique(np.quantile(gc[np.concatenate([pool, mot])], np.linspace(0, 1, bins + 1)))
    mb = np.clip(np.searchsorted(edges, gc[mot], side="right") - 1, 0, max(len(edges) - 2, 0))
    pb = np.clip(np.searchsorted(edges, gc[pool], side="right") - 1, 0, max(len(edges) - 2, 0))
    out = []
    for b in np.unique(mb):
        want = int((mb == b).sum()) * per_motif
        cand = pool[pb == b]
        if len(cand):
            out.append(rng.choice(cand, min(want, len(cand)), replace=False))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def scan_heads(
    attn,
    motif,
    valid,
    gc,
    *,
    layer: int = 0,
    threshold: float,
    r_min: float = R_MIN,
    rho_min: float = RHO_MIN,
    alpha: float = ALPHA,
    gc_bins: int = 10,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Both statistics for every head of one layer (see the module docstring).

    ``gc``: GC fraction of each token's bases (B, T). ``threshold``: motif score of a motif token.
    Columns: layer, head, r, p, q, n_tokens, rho, rho_low, rho_high, n_motif, n_background,
    attn_motif, attn_background, passes_r, passes_rho, passes (``q`` over the heads of this call;
    see :func:`head_criteria` for a table assembled from several calls).
    """
    attn, motif, valid, gc = _check(attn, motif, valid, gc)
    return scan_received(
        received_attention(attn, valid),
        motif,
        valid,
        gc,
        layer=layer,
        threshold=threshold,
        r_min=r_min,
        rho_min=rho_min,
        alpha=alpha,
        gc_bins=gc_bins,
        n_boot=n_boot,
        seed=seed,
    )


def scan_received(
    recv,
    motif,
    valid,
    gc,
    *,
    layer: int = 0,
    threshold: float,
    r_min: float = R_MIN,
    rho_min: float = RHO_MIN,
    alpha: float = ALPHA,
    gc_bins: int = 10,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """:func:`scan_heads` from the attention each token receives, (B, H, T) as
    :func:`received_attention` gives it: a caller can reduce each batch's (B, H, T, T) attention to
    that as it goes, so long sequences and many of them never hold the full attention in memory."""
    recv = np.asarray(recv, dtype=np.float64)
    if recv.ndim != 3:
        raise SaeflowError(f"received attention must be (batch, heads, tokens), got {recv.shape}")
    B, H, T = recv.shape
    motif = np.asarray(motif, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    gc = np.asarray(gc, dtype=np.float64)
    for name, a in (("motif scores", motif), ("valid mask", valid), ("GC per token", gc)):
        if a.shape != (B, T):
            raise SaeflowError(f"{name} must be (batch, tokens) = {(B, T)}, got {a.shape}")
    if np.isnan(recv).any():
        raise SaeflowError("NaN in the attention probabilities")
    if not valid.any():
        raise SaeflowError("no valid token")
    flat_valid = valid.reshape(-1)
    score = motif.reshape(-1).copy()
    finite = np.isfinite(score) & flat_valid
    floor = score[finite].min() if finite.any() else 0.0
    score[~np.isfinite(score)] = floor
    x = recv.transpose(1, 0, 2).reshape(H, -1)  # (H, B*T)
    r, p = _pearson(x[:, flat_valid], score[flat_valid])
    is_motif = flat_valid & (motif.reshape(-1) >= threshold)
    bg = gc_matched_background(gc.reshape(-1), is_motif, flat_valid, bins=gc_bins, seed=seed)
    mot = np.flatnonzero(is_motif)
    rows = []
    seq_of = np.repeat(np.arange(B), T)
    rng = np.random.default_rng(seed + 1)
    for h in range(H):
        am = x[h, mot].mean() if len(mot) else np.nan
        ab = x[h, bg].mean() if len(bg) else np.nan
        rho = am / ab if len(mot) and len(bg) and ab > 0 else np.nan
        lo = hi = np.nan
        if np.isfinite(rho) and n_boot:
            # resample whole sequences: tokens of a sequence share its attention pattern
            sm = np.bincount(seq_of[mot], weights=x[h, mot], minlength=B)
            cm = np.bincount(seq_of[mot], minlength=B)
            sb = np.bincount(seq_of[bg], weights=x[h, bg], minlength=B)
            cb = np.bincount(seq_of[bg], minlength=B)
            idx = rng.integers(0, B, size=(n_boot, B))
            with np.errstate(invalid="ignore", divide="ignore"):
                boot = (sm[idx].sum(1) / cm[idx].sum(1)) / (sb[idx].sum(1) / cb[idx].sum(1))
            lo, hi = percentile_ci(boot)
        rows.append(
            dict(
                layer=int(layer),
                head=h,
                r=r[h],
                p=p[h],
                n_tokens=int(flat_valid.sum()),
                rho=rho,
                rho_low=lo,
                rho_high=hi,
                n_motif=len(mot),
                n_background=len(bg),
                attn_motif=am,
                attn_background=ab,
            )
        )
    return head_criteria(pd.DataFrame(rows), r_min=r_min, rho_min=rho_min, alpha=alpha)


def scan_table(
    recv: Mapping[int, np.ndarray],
    motifs: Mapping[str, tuple[np.ndarray, float]],
    valid,
    gc,
    *,
    r_min: float = R_MIN,
    rho_min: float = RHO_MIN,
    alpha: float = ALPHA,
    gc_bins: int = 10,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """The whole head-scan table: :func:`scan_received` for every motif x layer, then
    :func:`head_criteria` over all of it, so ``q`` is BH over every layer x head x motif (one
    family).

    ``recv``: layer -> the attention each token receives (B, H, T); ``motifs``: motif id -> (its
    token scores (B, T), its motif-token threshold). Rows: motif, then layer, then head."""
    if not recv or not motifs:
        raise SaeflowError("head scan: no layer or no motif to scan")
    parts = []
    for mid, (score, threshold) in motifs.items():
        for layer, rl in recv.items():
            df = scan_received(
                rl,
                score,
                valid,
                gc,
                layer=layer,
                threshold=threshold,
                r_min=r_min,
                rho_min=rho_min,
                alpha=alpha,
                gc_bins=gc_bins,
                n_boot=n_boot,
                seed=seed,
            )
            df.insert(0, "motif", mid)
            parts.append(df)
    return head_criteria(
        pd.concat(parts, ignore_index=True), r_min=r_min, rho_min=rho_min, alpha=alpha
    )


def head_criteria(
    table: pd.DataFrame,
    *,
    r_min: float = R_MIN,
    rho_min: float = RHO_MIN,
    alpha: float = ALPHA,
) -> pd.DataFrame:
    """The registered criteria over ``table`` as one family: ``q`` = BH of ``p`` over every row
    (every layer x head x motif of the table; NaN p = not tested), ``passes_r`` = ``r >= r_min`` and
    ``q < alpha``, ``passes_rho`` = ``rho >= rho_min``, ``passes`` = both. Returns a copy with those
    columns (re)computed, ``q`` right after ``p``; apply it to the whole head-scan table, never to
    a part of it."""
    miss = [c for c in ("r", "p", "rho") if c not in table.columns]
    if miss:
        raise SaeflowError(f"head_criteria: the head scan has no column(s) {miss}")
    out = table.drop(columns=["q", "passes_r", "passes_rho", "passes"], errors="ignore")
    r = pd.to_numeric(out["r"], errors="coerce").to_numpy(dtype=float)
    p = pd.to_numeric(out["p"], errors="coerce").to_numpy(dtype=float)
    rho = pd.to_numeric(out["rho"], errors="coerce").to_numpy(dtype=float)
    q = bh(p)
    out.insert(out.columns.get_loc("p") + 1, "q", q)
    with np.errstate(invalid="ignore"):
        passes_r = np.isfinite(r) & (r >= r_min) & np.isfinite(q) & (q < alpha)
        passes_rho = np.isfinite(rho) & (rho >= rho_min)
    out["passes_r"] = passes_r
    out["passes_rho"] = passes_rho
    out["passes"] = passes_r & passes_rho
    return out


def heatmap_tables(scans: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """layer x head tables of r, rho and passes for the report's heatmaps."""
    if scans.empty:
        raise SaeflowError("no head scan rows")
    return {k: scans.pivot(index="layer", columns="head", values=k) for k in ("r", "rho", "passes")}

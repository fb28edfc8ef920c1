"""CTCF head scans: a planted motif head passes both registered criteria, a GC-loving head and a
uniform head do not; the statistics equal their textbook definitions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr

from saeflow.dna.headscan import (
    gc_matched_background,
    heatmap_tables,
    received_attention,
    scan_heads,
)
from saeflow.utils import SaeflowError


def planted(B=40, T=30, seed=0):
    """Head 0 attends to motif tokens, head 1 to GC-rich tokens, head 2 uniformly."""
    rng = np.random.default_rng(seed)
    valid = np.ones((B, T), bool)
    valid[:, 0] = valid[:, -1] = False  # specials
    valid[: B // 4, -6:] = False  # padding in some sequences
    gc = rng.uniform(0.2, 0.8, (B, T))
    motif = np.full((B, T), -np.inf)
    sites = rng.random((B, T)) < 0.1
    motif[sites] = rng.uniform(10, 20, sites.sum())
    weak = (~sites) & (rng.random((B, T)) < 0.3)
    motif[weak] = rng.uniform(-5, 5, weak.sum())
    gc[sites] = np.clip(gc[sites] + 0.15, 0, 1)  # motif tokens are GC-richer, as CTCF sites are
    logits = np.zeros((B, 3, T, T))
    logits[:, 0] += np.where(np.isfinite(motif), np.maximum(motif, 0) / 4, 0)[:, None, :]
    logits[:, 1] += 6 * gc[:, None, :]
    logits += np.where(valid, 0, -1e9)[:, None, None, :]
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    return attn, motif, valid, gc


def test_planted_motif_head_passes_and_gc_and_uniform_heads_do_not():
    attn, motif, valid, gc = planted()
    df = scan_heads(attn, motif, valid, gc, layer=3, threshold=8.0, n_boot=300)
    assert list(df["head"]) == [0, 1, 2] and (df.layer == 3).all()
    h0, h1, h2 = (df.iloc[i] for i in range(3))
    assert h0.passes and h0.r > 0.5 and h0.rho > 2 and h0.rho_low > 2
    # the GC head prefers motif tokens a little (they are GC-richer) but not against GC-matched
    # background
    assert not h1.passes and h1.rho < 2
    assert not h2.passes and abs(h2.rho - 1) < 0.05
    assert h0.n_motif == int((valid & (motif >= 8)).sum()) and h0.n_background > 0.9 * h0.n_motif
    tabs = heatmap_tables(df)
    assert tabs["r"].shape == (1, 3) and bool(tabs["passes"].loc[3, 0])


def test_r_is_pearson_over_valid_tokens_of_received_attention():
    attn, motif, valid, gc = planted(B=12, T=20, seed=1)
    df = scan_heads(attn, motif, valid, gc, threshold=8.0, n_boot=0)
    recv = received_attention(attn, valid)
    # by hand: mean over valid queries of the attention each key receives
    b, h, t = 2, 0, 5
    assert recv[b, h, t] == pytest.approx(attn[b, h, valid[b], t].mean())
    score = motif.copy()
    score[~np.isfinite(score)] = score[np.isfinite(score) & valid].min()
    for h in range(3):
        r, p = pearsonr(recv[:, h][valid], score[valid])
        assert df.r[h] == pytest.approx(r, abs=1e-10) and df.p[h] == pytest.approx(
            p, rel=1e-6, abs=1e-300
        )


def test_gc_matched_background_has_the_motif_gc_histogram():
    rng = np.random.default_rng(2)
    gc = rng.uniform(0, 1, 5000)
    is_motif = rng.random(5000) < 0.05
    gc[is_motif] = rng.uniform(0.6, 0.9, is_motif.sum())  # motif tokens GC-rich
    bg = gc_matched_background(gc, is_motif, np.ones(5000, bool), bins=10, seed=0)
    assert not is_motif[bg].any() and len(np.unique(bg)) == len(bg)
    assert abs(gc[bg].mean() - gc[is_motif].mean()) < 0.03
    assert (
        abs(gc[~is_motif].mean() - gc[is_motif].mean()) > 0.2
    )  # unmatched background would differ


def test_bad_inputs_are_named():
    attn, motif, valid, gc = planted(B=4, T=10)
    with pytest.raises(SaeflowError, match="batch, heads, query, key"):
        scan_heads(attn[0], motif, valid, gc, threshold=1)
    with pytest.raises(SaeflowError, match="motif scores must be"):
        scan_heads(attn, motif[:, :5], valid, gc, threshold=1)
    bad = attn.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(SaeflowError, match="NaN in the attention"):
        scan_heads(bad, motif, valid, gc, threshold=1)
    with pytest.raises(SaeflowError, match="no valid token"):
        scan_heads(attn, motif, np.zeros_like(valid), gc, threshold=1)

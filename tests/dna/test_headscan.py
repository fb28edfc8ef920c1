"""CTCF head scans: a planted motif head passes both registered criteria, a GC-loving head and a
uniform head do not; the statistics equal their textbook definitions; q is BH over the whole
layer x head x motif table, so null heads that reach p < 0.05 by chance do not pass."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr

from saeflow.dna.headscan import (
    gc_matched_background,
    head_criteria,
    heatmap_tables,
    received_attention,
    scan_heads,
    scan_table,
)
from saeflow.stats import bh
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
    # unmatched background would differ
    assert abs(gc[~is_motif].mean() - gc[is_motif].mean()) > 0.2


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


# ------------------------------------------------------------------ the family: BH over the table


def null_and_one_real(seed=14, L=16, H=2, motifs=("M0", "M1"), B=2, T=8):
    """Received attention of L layers x H heads, scored against two motifs on 16 tokens: every head
    is noise except layer 3 head 0, which follows motif M0's score. Few tokens, so null heads reach
    r >= 0.5 by chance; L x H x M = 64 tests, so some of them also reach p < 0.05."""
    rng = np.random.default_rng(seed)
    valid = np.ones((B, T), bool)
    gc = rng.uniform(0.2, 0.8, (B, T))
    scores = {m: (rng.normal(size=(B, T)), 1.0) for m in motifs}
    recv = {layer: rng.uniform(0.5, 1.5, (B, H, T)) / T for layer in range(1, L + 1)}
    s0 = scores["M0"][0]
    recv[3][:, 0] = s0 - s0.min() + 0.5 + 0.05 * rng.normal(size=(B, T))
    recv[3][:, 0] /= recv[3][:, 0].sum(1, keepdims=True)
    return recv, scores, valid, gc


def test_q_is_bh_over_the_whole_table_and_only_the_real_head_passes():
    recv, scores, valid, gc = null_and_one_real()
    t = scan_table(recv, scores, valid, gc, n_boot=0)
    assert len(t) == 16 * 2 * 2 and list(t.columns[:6]) == ["motif", "layer", "head", "r", "p", "q"]
    real = ((t.motif == "M0") & (t.layer == 3) & (t["head"] == 0)).to_numpy()
    # the family is the whole table: every layer x head x motif, not one scan_received call
    np.testing.assert_allclose(t.q, bh(t.p.to_numpy()), rtol=1e-12)
    # the premise: uncorrected p lets null heads through, so does BH per layer or per layer x motif
    assert ((t.r >= 0.5) & (t.p < 0.05) & ~real).sum() >= 2
    for by in (["layer"], ["motif", "layer"]):
        per = t.groupby(by).p.transform(lambda p: bh(p.to_numpy()))
        assert ((t.r >= 0.5) & (per < 0.05) & ~real).sum() >= 2, by
    # with q over the family only the real head passes the correlation criterion
    assert t.passes_r.to_numpy().tolist() == real.tolist()
    assert t.q[real].item() < 1e-6 and t.r[real].item() > 0.95
    assert (t.passes == (t.passes_r & t.passes_rho)).all()
    assert (t.passes_rho == (t.rho >= 2)).all()


def test_head_criteria_counts_every_row_and_skips_untested():
    # 2 motifs x 2 layers x 5 heads = 20 rows; one real head, four nulls with r >= 0.5 and p < 0.05
    rows = []
    for m in ("A", "B"):
        for layer in (1, 2):
            for h in range(5):
                rows.append(dict(motif=m, layer=layer, head=h, r=0.1, p=0.5, rho=3.0))
    t = pd.DataFrame(rows)
    t.loc[0, ["r", "p"]] = [0.9, 1e-6]  # the real head: A, layer 1, head 0
    t.loc[[1, 2, 3, 4], "r"] = 0.6  # its layer's other heads: nulls that correlate by chance
    t.loc[[1, 2, 3, 4], "p"] = [0.01, 0.02, 0.03, 0.04]
    t.loc[19, ["r", "p"]] = [np.nan, np.nan]  # not tested: NaN q, not in the family, does not pass
    out = head_criteria(t)
    assert "p" in out and list(out.columns).index("q") == list(out.columns).index("p") + 1
    assert np.isnan(out.q[19]) and not out.passes[19]
    # family of 19 tested rows: q of the 0.04 null = 0.04 * 19 / 5 = 0.152 (per layer: 0.04)
    assert out.q[4] == pytest.approx(0.04 * 19 / 5)
    assert out.passes_r.tolist() == [True] + [False] * 19
    assert out.passes.tolist() == [True] + [False] * 19
    # uncorrected p would pass them all
    assert ((t.r >= 0.5) & (t.p < 0.05)).sum() == 5
    # re-applying it is idempotent (evidence.head_scan applies it to scan_received's tables)
    pd.testing.assert_frame_equal(head_criteria(out), out)
    with pytest.raises(SaeflowError, match="no column"):
        head_criteria(t.drop(columns="p"))

"""saeflow.dna.evidence: the glue of the DNA evidence rules,
on tiny models and planted sequences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from saeflow.dna.evidence import (
    ScoredMotif,
    best_motif_features,
    feature_ablation,
    head_scan,
    load_motifs,
    motif_tokens,
    patching,
    summarise_patching,
    token_gc,
)
from saeflow.stats import bh
from saeflow.utils import SaeflowError


@pytest.fixture(scope="module")
def ctcf():
    return load_motifs(["MA0139.1"])[0]


def _planted(ctcf: ScoredMotif, n=40, length=100, seed=0):
    """Random sequences; the even ones carry the CTCF consensus at base 40."""
    from saeflow.dna.motifs import load_jaspar

    rng = np.random.default_rng(seed)
    cons = "".join("ACGT"[i] for i in load_jaspar("MA0139.1").counts.argmax(1))
    seqs = []
    for i in range(n):
        s = "".join(rng.choice(list("ACGT"), length))
        if i % 2 == 0:
            s = s[:40] + cons + s[40 + len(cons) :]
        seqs.append(s)
    return pd.DataFrame(
        {
            "name": [f"s{i}" for i in range(n)],
            "sequence": seqs,
            "label": [1 - i % 2 for i in range(n)],
            "split": ["train" if i % 4 < 2 else "test" for i in range(n)],
        }
    ), cons


def test_token_gc_matches_direct_count():
    seqs = ["ACGTGGCCAA", "ttgc", "NNGC"]
    si = np.array([0, 0, 1, 2, 2, 0])
    st = np.array([0, 4, 0, 0, 2, 9])
    en = np.array([4, 8, 4, 2, 4, 9])
    got = token_gc(seqs, si, st, en)
    want = [0.5, 1.0, 0.5, 0.0, 1.0, np.nan]
    np.testing.assert_allclose(got, want)


def test_motif_tokens_flags_exactly_the_tokens_over_the_site(ctcf):
    seqs, cons = _planted(ctcf, n=6)
    # non-overlapping 10-base tokens, rows grouped by sequence as in an activation store
    tokens = pd.DataFrame(
        [(i, t, 10 * t, 10 * t + 10) for i in range(6) for t in range(10)],
        columns=["seq", "pos", "start", "end"],
    )
    table, sites = motif_tokens(seqs, tokens, [ctcf])
    site = sites[(sites.seq == 0) & (sites.start == 40)]
    assert len(site) == 1 and site.end.iloc[0] == 40 + len(cons)
    hit0 = table[table.seq == 0].set_index("pos")["MA0139.1_hit"]
    # the consensus covers bases 40..58: tokens 4 and 5 (and no others, unless chance made a site)
    assert hit0.loc[4] and hit0.loc[5]
    chance = sites[(sites.seq == 0) & (sites.start != 40)]
    if chance.empty:
        assert not hit0.drop([4, 5]).any()
    assert np.isclose(table.loc[0, "gc"], sum(c in "GC" for c in seqs.sequence[0][:10]) / 10)
    with pytest.raises(SaeflowError, match="lacks column"):
        motif_tokens(seqs.drop(columns="split"), tokens, [ctcf])


def test_best_motif_features_selects_on_train_and_ignores_dead():
    feats = pd.DataFrame(
        {
            "feature": [0, 1, 2],
            "frequency": [0.0, 0.1, 0.2],
            "M_auroc_train": [0.99, 0.9, 0.7],
            "M_auroc_test": [0.99, 0.6, 0.8],
        }
    )
    best = best_motif_features(feats, ["M", "absent"])
    assert best.feature.tolist() == [1] and best.auroc_test.iloc[0] == 0.6


@pytest.fixture(scope="module")
def adapter(tiny_model_dir):
    from saeflow.models import load_model

    torch.manual_seed(0)
    return load_model(tiny_model_dir, family="toy")


def test_head_scan_covers_every_layer_and_head(adapter, ctcf):
    seqs, _ = _planted(ctcf, n=24)
    table = head_scan(adapter, seqs, [ctcf], n_sequences=20, batch_size=7, n_boot=50)
    assert len(table) == adapter.n_layers * adapter.n_heads
    assert set(table.layer) == set(range(1, adapter.n_layers + 1))
    assert (table.n_sequences == 20).all() and (table.n_motif > 0).all()
    assert table.r.between(-1, 1).all() and (table.rho > 0).all()
    # one family: q is BH over every layer x head x motif of the table, and the criterion reads q
    np.testing.assert_allclose(table.q, bh(table.p.to_numpy()), rtol=1e-12)
    assert (table.passes == ((table.r >= 0.5) & (table.q < 0.05) & (table.rho >= 2))).all()


def test_patching_restores_the_clean_run_at_the_embeddings(adapter, ctcf):
    """Patching the clean embeddings at the site's tokens into the corrupted run recreates the
    clean input exactly: PM = 1 for every pair (the site's tokens are the only ones that differ)."""
    from saeflow.dna.counterfactual import counterfactual_pairs

    seqs, _ = _planted(ctcf, n=16)
    pairs = counterfactual_pairs(seqs.sequence, ctcf.pssm, ctcf.threshold, names=seqs.name)
    assert len(pairs) >= 8
    w = np.random.default_rng(0).normal(size=adapter.d_model).astype(np.float32)
    per_pair, kept = patching(adapter, pairs, w, 0.0, batch_size=5, min_gap=1e-4)
    L, H = adapter.n_layers, adapter.n_heads
    n = int(kept.kept.sum())
    assert n == len(pairs)
    assert len(per_pair) == n * (L * H + 2 * (L + 1))
    emb = per_pair[(per_pair.component == "resid_at_site") & (per_pair.layer == 0)]
    np.testing.assert_allclose(emb.patched, emb.clean, rtol=1e-4, atol=1e-4)
    assert np.allclose(emb.pm.dropna(), 1.0, atol=1e-3)
    # the control: at the embeddings the other tokens are identical in both runs, so patching them
    # does nothing
    ctrl = per_pair[(per_pair.component == "resid_off_site") & (per_pair.layer == 0)]
    np.testing.assert_allclose(ctrl.patched, ctrl.corrupted, rtol=1e-4, atol=1e-4)
    summary = summarise_patching(per_pair.assign(motif="MA0139.1"))
    assert set(summary.component) == {"head", "resid_at_site", "resid_off_site"}
    assert (summary.n_pairs <= n).all()


def test_patched_readouts_equal_full_passes(adapter, ctcf):
    """Every head and at-site residual patch (computed reusing the corrupted run's blocks below
    it) gives the readout of a full corrupted pass with that one component patched in."""
    from saeflow.dna.counterfactual import counterfactual_pairs
    from saeflow.models.base import Capture, Patch

    seqs, _ = _planted(ctcf, n=12)
    pairs = counterfactual_pairs(seqs.sequence, ctcf.pssm, ctcf.threshold, names=seqs.name)
    pairs = pairs[pairs.corrupted.notna()].head(4).reset_index(drop=True)
    w = np.random.default_rng(1).normal(size=adapter.d_model).astype(np.float32)
    per_pair, _ = patching(adapter, pairs, w, 0.5, batch_size=4, min_gap=1e-4)
    L, H = adapter.n_layers, adapter.n_heads
    tc, tx = adapter.tokenize(pairs.clean.tolist()), adapter.tokenize(pairs.corrupted.tolist())
    v = torch.from_numpy(~tc.special).float()

    def readout(r):
        h = r.resid[L].float()
        return ((h * v[..., None]).sum(1) / v.sum(1, keepdim=True)) @ torch.from_numpy(w) + 0.5

    st, en = pairs.start.to_numpy()[:, None], pairs.end.to_numpy()[:, None]
    over = lambda t: (t.offsets[..., 0] < en) & (t.offsets[..., 1] > st)  # noqa: E731
    site = torch.from_numpy((over(tc) | over(tx)) & ~tc.special)
    with torch.inference_mode():
        rc = adapter.run(tc, Capture(resid=list(range(L + 1)), head_out=list(range(1, L + 1))))
        got = per_pair.set_index(["component", "layer", "head", "pair"]).patched
        for layer in range(1, L + 1):
            for h in range(H):
                patch = Patch(heads={(layer, h): rc.head_out[layer][:, :, h, :]})
                want = readout(adapter.run(tx, Capture(resid=[L]), patch)).numpy()
                np.testing.assert_allclose(
                    got.loc["head", layer, h].sort_index(), want, rtol=1e-4, atol=1e-5
                )
        for layer in range(L + 1):

            def put(t, cr=rc.resid[layer]):
                return torch.where(site[..., None], cr.to(t.dtype), t)

            want = readout(adapter.run(tx, Capture(resid=[L]), Patch(resid={layer: put}))).numpy()
            np.testing.assert_allclose(
                got.loc["resid_at_site", layer, -1].sort_index(), want, rtol=1e-4, atol=1e-5
            )


def test_ablation_specificity_ranks_a_strong_feature_above_its_null(adapter):
    from saeflow.models.base import Capture
    from saeflow.sae import build_sae

    torch.manual_seed(0)
    sae = build_sae({"arch": "relu_l1", "expansion": 8, "l1_coefficient": 1.0}, adapter.d_model)
    seqs = ["".join(np.random.default_rng(i).choice(list("ACGT"), 60)) for i in range(12)]
    tb = adapter.tokenize(seqs)
    with torch.no_grad():
        x = adapter.run(tb, Capture(resid=[1])).resid[1]
        # genuine tokens only, as the ablation counts them
        z = sae.encode(x[torch.from_numpy(~tb.special)])
    freq = (z > 0).float().mean(0).numpy()
    live = (freq > 0) & (freq < 1)
    assert live.sum() > 26
    target = int(np.flatnonzero(live)[0])
    with torch.no_grad():
        sae.W_dec.mul_(1e-3)  # every feature writes almost nothing ...
        # ... except the target
        sae.W_dec[target] = sae.W_dec[target] / sae.W_dec[target].norm() * 50
    # null candidates: every live feature gets the target's frequency, so all qualify as matched
    freq = np.where(live, freq[target], 0.0)
    targets = pd.DataFrame({"motif": ["M"], "feature": [target]})
    table, null = feature_ablation(
        adapter, sae, 1, seqs, targets, freq, n_null=10, batch_size=5, seed=0
    )
    r = table.iloc[0]
    assert r.n_null == 10
    assert r.specificity > r.null_q95
    assert r.p == pytest.approx(1 / 11) and not r.specific  # 10 nulls cannot reach p < 0.05 ...
    table, _ = feature_ablation(
        adapter, sae, 1, seqs, targets, freq, n_null=25, batch_size=5, seed=0
    )
    assert table.p.iloc[0] == pytest.approx(1 / 26) and table.specific.iloc[0]  # ... 25 can
    assert len(null) == 10 and (null.feature != target).all()


def test_pairs_that_tokenise_to_different_lengths_are_dropped_not_fatal():
    """A BPE tokeniser can split the corrupted copy into more tokens; only that pair is dropped."""
    from types import SimpleNamespace

    from saeflow.dna.evidence import same_spans

    def tok(spans, width):
        off = np.zeros((len(spans), width, 2), np.int64)
        mask = np.zeros((len(spans), width), np.int64)
        for i, s in enumerate(spans):
            off[i, : len(s)] = s
            mask[i, : len(s)] = 1
        return SimpleNamespace(
            offsets=off, special=mask == 0, attention_mask=torch.from_numpy(mask)
        )

    a = [[(0, 3), (3, 6)], [(0, 2), (2, 6)], [(0, 6)]]
    b = [[(0, 3), (3, 6)], [(0, 2), (2, 4), (4, 6)], [(0, 6)]]
    same = same_spans(tok(a, 2), tok(b, 3))
    assert same.tolist() == [True, False, True]
    # padding beyond a row's own length never counts as a difference
    assert same_spans(tok(a, 2), tok(a, 5)).all()
    # the site's tokens may be split differently if the count and every other span agree
    c = [[(0, 2), (2, 4), (4, 8)], [(0, 2), (2, 4), (4, 8)]]
    d = [[(0, 3), (3, 4), (4, 8)], [(0, 1), (1, 4), (4, 8)]]
    assert same_spans(tok(c, 3), tok(d, 3), [1, 4], [3, 6]).tolist() == [
        True,
        False,
    ]  # row 2's site is 4..6
    assert not same_spans(tok(c, 3), tok(d, 3)).any()  # no site given: every span must agree

"""saeflow.dna.patching: the patching rule's loop over motifs, on a tiny model and planted
sequences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saeflow.dna.evidence import load_motifs, summarise_patching
from saeflow.dna.patching import hit_sequences, run_patching, same_tokens
from tests.dna.test_evidence import _planted


@pytest.fixture(scope="module")
def motifs():
    return load_motifs(["MA0139.1", "MA0108.1"])


def test_hit_sequences_samples_only_sequences_with_a_hit(motifs):
    ctcf = motifs[0]
    seqs, _ = _planted(ctcf, n=30)
    from saeflow.dna.motifscan import scan

    has = (scan(seqs.sequence.tolist(), ctcf.pssm).score >= np.float32(ctcf.threshold)).any(axis=1)
    every = hit_sequences(seqs.sequence, ctcf, 100, np.random.default_rng(0))
    assert every.tolist() == np.flatnonzero(has).tolist() and len(every) >= 15  # the planted ones
    pick = hit_sequences(seqs.sequence, ctcf, 6, np.random.default_rng(0))
    assert len(pick) == 6 and set(pick) <= set(every) and (np.diff(pick) > 0).all()
    again = hit_sequences(seqs.sequence, ctcf, 6, np.random.default_rng(0))
    assert again.tolist() == pick.tolist()


def test_same_tokens_refuses_a_copy_that_tokenises_differently():
    class Tok:
        """Stand-in tokeniser: one token per base, so a longer copy has more tokens."""

        def tokenize(self, seqs):
            from types import SimpleNamespace

            n = len(seqs[0])
            return SimpleNamespace(
                offsets=np.stack([np.arange(n), np.arange(n) + 1], axis=1)[None],
                special=np.zeros((1, n), bool),
                attention_mask=np.ones((1, n), bool),
            )

    accept = same_tokens(Tok())
    assert accept("ACGTACGT", "ACTTACGT", 2, 3)
    assert not accept("ACGTACGT", "ACGTACGTA", 2, 3)


@pytest.fixture(scope="module")
def adapter(tiny_model_dir):
    from saeflow.models import load_model

    torch.manual_seed(0)
    return load_model(tiny_model_dir, family="toy")


def test_run_patching_covers_every_motif_with_at_most_n_pairs(adapter, motifs):
    seqs, _ = _planted(motifs[0], n=24)
    pairs, per_pair, summary = run_patching(
        adapter, seqs, motifs, n_pairs=5, batch_size=4, min_gap=1e-4, seed=2
    )
    assert pairs.motif.unique().tolist() == ["MA0139.1", "MA0108.1"]  # in the order given
    counts = pairs.groupby("motif", sort=False).size()
    assert counts["MA0139.1"] == 5 and (counts <= 5).all()
    assert pairs.name.isin(seqs.name).all()
    assert pairs.readout_auroc.nunique() == 1 and pairs.readout_auroc.between(0, 1).all()
    assert {"kept", "gap", "clean", "corrupted", "start", "end"} <= set(pairs.columns)
    L, H = adapter.n_layers, adapter.n_heads
    for m, g in per_pair.groupby("motif"):
        kept = int(pairs[pairs.motif == m].kept.sum())
        assert len(g) == kept * (L * H + 2 * (L + 1))
    assert summary.equals(summarise_patching(per_pair))

"""Activation patching of a DNA model over every motif (the patching rule): per motif a seeded
sample of the sequences with a hit, their counterfactual pairs (the site destroyed, length and GC
kept; :mod:`saeflow.dna.counterfactual`) and the patching of each pair
(:func:`saeflow.dna.evidence.patching`) against one label readout
(:func:`saeflow.dna.evidence.train_readout`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger("patching")


def hit_sequences(sequences: Sequence[str], motif, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of the sequences holding a hit of ``motif`` (a ScoredMotif), a sample of
    ``n`` of them drawn from ``rng`` when there are more (sample first: destroying a site
    rescans)."""
    from saeflow.dna.motifscan import scan

    best = scan(list(sequences), motif.pssm).score
    with_hit = np.flatnonzero((best >= np.float32(motif.threshold)).any(axis=1))
    if len(with_hit) > n:
        with_hit = np.sort(rng.choice(with_hit, n, replace=False))
    return with_hit


def same_tokens(adapter) -> Callable[[str, str, int, int], bool]:
    """The ``accept`` of :func:`counterfactual_pairs` for ``adapter``'s tokeniser: a corrupted copy
    is kept when both copies tokenise to the same spans outside the site (a BPE tokeniser such as
    DNABERT-2's may re-segment beyond it or change the token count: the site is then redrawn)."""
    from saeflow.dna.evidence import same_spans

    def accept(clean: str, corrupted: str, start: int, end: int) -> bool:
        tc, tx = adapter.tokenize([clean]), adapter.tokenize([corrupted])
        return bool(same_spans(tc, tx, [start], [end])[0])

    return accept


def run_patching(
    adapter,
    sequences: pd.DataFrame,
    motifs: Sequence,
    *,
    n_pairs: int = 256,
    batch_size: int = 64,
    min_gap: float = 0.05,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The patching rule: a label readout on the last layer, then per motif (ScoredMotif) at most
    ``n_pairs`` counterfactual pairs of the sequences with a hit, each patched component by
    component.

    Returns (pairs: every pair with kept, gap, motif and the readout's held-out readout_auroc;
    per_pair: :func:`patching`'s per-pair table with motif; summary: :func:`summarise_patching`).
    """
    from saeflow.dna.counterfactual import counterfactual_pairs
    from saeflow.dna.evidence import patching, summarise_patching, train_readout

    wt, b, auc = train_readout(adapter, sequences, batch_size=batch_size, seed=seed)
    log.info("readout (label probe on the last layer, mean-pooled): held-out AUROC %.3f", auc)
    rng = np.random.default_rng(seed)
    accept = same_tokens(adapter)
    pair_tables, per_pair = [], []
    for m in motifs:
        sub = sequences.iloc[hit_sequences(sequences.sequence.tolist(), m, n_pairs, rng)]
        pairs = counterfactual_pairs(
            sub.sequence.tolist(),
            m.pssm,
            m.threshold,
            names=sub.name.tolist(),
            seed=seed,
            accept=accept,
        )
        log.info(
            "%s: %d counterfactual pairs (%d could not be made)",
            m.matrix_id,
            len(pairs),
            pairs.corrupted.isna().sum(),
        )
        pp, pairs = patching(
            adapter, pairs, wt, b, batch_size=batch_size, min_gap=min_gap, seed=seed
        )
        log.info(
            "%s: %d of %d pairs tokenise to the same spans and were patched",
            m.matrix_id,
            pairs.kept.sum(),
            len(pairs),
        )
        if len(pairs) and not pairs.kept.any():
            log.warning(
                "%s: no pair could be patched (every corrupted copy tokenised to different spans)",
                m.matrix_id,
            )
        pair_tables.append(pairs.assign(motif=m.matrix_id, readout_auroc=auc))
        per_pair.append(pp.assign(motif=m.matrix_id))
    per_pair = pd.concat(per_pair, ignore_index=True)
    return pd.concat(pair_tables, ignore_index=True), per_pair, summarise_patching(per_pair)

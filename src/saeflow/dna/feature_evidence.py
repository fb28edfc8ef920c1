"""The SAE feature rules of a DNA run's layer. feature_evidence: label 1 vs label 0 sequences per
feature (:func:`label_differential`). feature_ablation: per motif its best feature
(:func:`saeflow.dna.evidence.best_motif_features`, chosen on training sequences) ablated on a
seeded sample of held-out sequences against frequency-matched null features
(:func:`saeflow.dna.evidence.feature_ablation`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def label_differential(
    means, labels: np.ndarray, frequency: np.ndarray, *, test: str = "mannwhitney"
) -> pd.DataFrame:
    """Differential features of label 1 vs label 0 sequences (e.g. peaks vs background, promoters vs
    not) on the per-sequence mean activations ``means`` (:func:`differential_features`), with each
    feature's ``frequency`` after its name."""
    from saeflow.dna.differential import differential_features

    diff = differential_features(means, labels, 1, 0, test=test)
    diff.insert(1, "frequency", frequency)
    return diff


def held_out_sequences(sequences: pd.DataFrame, n: int, seed: int) -> list[str]:
    """A seeded sample of at most ``n`` of the test-split sequences, in the table's order."""
    held = sequences[sequences.split == "test"]
    held = held.sample(n=min(len(held), n), random_state=seed).sort_index()
    return held.sequence.tolist()


def run_feature_ablation(
    adapter,
    sae,
    layer: int,
    sequences: pd.DataFrame,
    feats: pd.DataFrame,
    motifs: Sequence[str],
    *,
    n_sequences: int = 256,
    n_null: int = 50,
    batch_size: int = 64,
    seed: int = 0,
    alpha: float = 0.05,
    mask_prob: float | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ablation of each motif's best feature of ``feats`` (the layer's feature-evidence table) on at
    most ``n_sequences`` held-out sequences. Returns the ablation table with the feature's training
    and held-out AUROC after motif and feature, and the null features' specificities."""
    from saeflow.dna.evidence import best_motif_features, feature_ablation

    targets = best_motif_features(feats, motifs)
    table, null = feature_ablation(
        adapter,
        sae,
        layer,
        held_out_sequences(sequences, n_sequences, seed),
        targets,
        feats.frequency.to_numpy(),
        n_null=n_null,
        batch_size=batch_size,
        seed=seed,
        alpha=alpha,
        mask_prob=mask_prob,
    )
    table = targets[["motif", "feature", "auroc_train", "auroc_test"]].merge(
        table, on=["motif", "feature"]
    )
    return table, null

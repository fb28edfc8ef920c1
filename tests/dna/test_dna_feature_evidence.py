"""saeflow.dna.ablation: the feature_ablation rule's choice of features and held-out sequences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from saeflow.dna.feature_evidence import held_out_sequences, run_feature_ablation


def _sequences(n=30):
    return pd.DataFrame(
        {
            "name": [f"s{i}" for i in range(n)],
            "sequence": [
                "".join(np.random.default_rng(i).choice(list("ACGT"), 40)) for i in range(n)
            ],
            "split": np.where(np.arange(n) % 3 == 0, "test", "train"),
        }
    )


def test_held_out_sequences_are_a_seeded_sample_of_the_test_split_in_order():
    seqs = _sequences()
    test = seqs[seqs.split == "test"].sequence.tolist()
    assert held_out_sequences(seqs, 100, 0) == test
    pick = held_out_sequences(seqs, 4, 0)
    assert len(pick) == 4 and set(pick) <= set(test)
    assert sorted(pick, key=test.index) == pick  # the table's order
    assert held_out_sequences(seqs, 4, 0) == pick and held_out_sequences(seqs, 4, 1) != pick


@pytest.fixture(scope="module")
def adapter(tiny_model_dir):
    from saeflow.models import load_model

    torch.manual_seed(0)
    return load_model(tiny_model_dir, family="toy")


def test_run_feature_ablation_ablates_each_motifs_best_live_feature(adapter):
    from saeflow.sae import build_sae

    torch.manual_seed(0)
    sae = build_sae({"arch": "topk", "expansion": 2, "k": 4}, adapter.d_model)
    n = sae.W_dec.shape[0]
    feats = pd.DataFrame(
        {
            "feature": range(n),
            "frequency": np.r_[0.0, np.full(n - 1, 0.1)],
            "A_auroc_train": np.r_[0.99, 0.9, np.full(n - 2, 0.5)],  # feature 0 is dead
            "A_auroc_test": np.r_[0.99, 0.8, np.full(n - 2, 0.5)],
            "B_auroc_train": np.r_[np.full(n - 1, 0.5), 0.7],
            "B_auroc_test": np.r_[np.full(n - 1, 0.5), 0.6],
        }
    )
    table, null = run_feature_ablation(
        adapter, sae, 1, _sequences(), feats, ["B", "A", "C"], n_sequences=3, n_null=3,
        batch_size=2, seed=0, mask_prob=0.3,
    )  # fmt: skip
    assert table.motif.tolist() == ["B", "A"] and table.feature.tolist() == [n - 1, 1]
    assert table.auroc_train.tolist() == [0.7, 0.9] and table.auroc_test.tolist() == [0.6, 0.8]
    assert list(table.columns[:6]) == [
        "motif",
        "feature",
        "auroc_train",
        "auroc_test",
        "frequency",
        "specificity",
    ]
    assert {"motif", "feature", "specificity"} <= set(null.columns)
    assert set(null.motif) <= {"A", "B"} and not null.feature.isin([0, 1, n - 1]).any()


def test_label_differential_tests_label_1_against_0_with_each_features_frequency():
    from saeflow.dna.feature_evidence import label_differential

    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(30, int), np.zeros(30, int), np.full(5, 2)]  # label 2: left out
    means = rng.random((65, 4))
    means[:30, 2] += 1.0  # feature 2 is higher on label 1
    freq = np.array([0.1, 0.2, 0.3, 0.4])
    diff = label_differential(means, labels, freq, test="welch")
    assert list(diff.columns[:2]) == ["feature", "frequency"]
    assert diff.frequency.tolist() == freq.tolist() and diff.feature.tolist() == [0, 1, 2, 3]
    top = diff.loc[diff.q.idxmin()]
    assert top.feature == 2 and top["diff"] > 0.8 and top.q < 1e-6

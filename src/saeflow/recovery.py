"""Ground-truth recovery: does a single SAE feature find the planted motifs?

For each planted motif and each feature, at base level a base counts as
predicted when a token covering it fires (activation > 0), and as true when it
lies in a planted instance; at window level a sequence is scored by the
feature's maximum activation and labelled by whether it holds a whole planted
instance. The best feature is *selected on the training split* and its
precision, recall, F1 and AUROC are *reported on the held-out split*, so the
selection over thousands of features does not inflate the numbers. As a
null, the same selection is run against the motif intervals moved to a
random place in the same window (``f1_null``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .activations import ActivationStore
from .catalog import sequence_bounds


def auroc_matrix(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of each column of ``scores`` (n, F) for binary ``labels`` (ties count one half)."""
    from scipy.stats import rankdata

    labels = labels.astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return np.full(scores.shape[1], np.nan)
    ranks = rankdata(scores, axis=0)
    return (ranks[labels].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def planted_in_windows(sequences: pd.DataFrame, planted: pd.DataFrame, motif_id: str):
    """Per sequence: list of (start, end) of motif instances relative to the window; and a whole-instance flag."""
    pm = planted[planted.motif_id == motif_id]
    by_chrom = {c: g[["start", "end"]].to_numpy() for c, g in pm.groupby("chrom")}
    spans, whole = [], np.zeros(len(sequences), bool)
    for i, w in enumerate(sequences.itertuples()):
        iv = by_chrom.get(w.chrom)
        out = []
        if iv is not None and pd.notna(w.start):
            hit = iv[(iv[:, 1] > w.start) & (iv[:, 0] < w.end)]
            for a, b in hit:
                out.append((max(0, int(a - w.start)), min(int(w.end - w.start), int(b - w.start))))
                whole[i] |= a >= w.start and b <= w.end
        spans.append(out)
    return spans, whole


@torch.no_grad()
def recovery_table(sae, store: ActivationStore, layer: int, sequences: pd.DataFrame, planted: pd.DataFrame,
                   seed: int = 0) -> pd.DataFrame:
    tokens = store.tokens
    bounds = sequence_bounds(tokens)
    arr = store.layer(layer)
    starts, ends = tokens.start.to_numpy(), tokens.end.to_numpy()
    n_seq, F = len(sequences), sae.d_sae
    is_test = (sequences.split == "test").to_numpy()
    rng = np.random.default_rng(seed)
    motifs = planted.drop_duplicates("motif_id")[["motif_id", "motif_name"]].itertuples(index=False)
    motifs = list(motifs)
    spans = {m.motif_id: planted_in_windows(sequences, planted, m.motif_id) for m in motifs}
    # per split: TP, predicted-positive and true-positive base counts per feature; also for the null truth
    acc = {(m.motif_id, kind, split): np.zeros(F) for m in motifs for kind in ("tp", "tp_null") for split in (0, 1)}
    pp = {split: np.zeros(F) for split in (0, 1)}
    npos = {(m.motif_id, split): 0 for m in motifs for split in (0, 1)}
    win_score = np.zeros((n_seq, F), dtype=np.float32)
    for s in range(n_seq):
        lo, hi = bounds[s], bounds[s + 1]
        if hi <= lo:
            continue
        z = sae.encode(torch.from_numpy(np.asarray(arr[lo:hi], dtype=np.float32))).numpy()
        win_score[s] = z.max(0)
        L = int(ends[lo:hi].max())
        cover = np.zeros((L, hi - lo), dtype=np.float32)
        for t, (a, b) in enumerate(zip(starts[lo:hi], ends[lo:hi])):
            cover[a:b, t] = 1
        base_fire = ((cover @ (z > 0).astype(np.float32)) > 0).astype(np.float32)  # (L, F)
        split = int(is_test[s])
        pp[split] += base_fire.sum(0)
        for m in motifs:
            truth = np.zeros(L, bool)
            null = np.zeros(L, bool)
            for a, b in spans[m.motif_id][0][s]:
                truth[a:b] = True
                shift = int(rng.integers(0, max(1, L - (b - a))))
                null[shift : shift + (b - a)] = True
            npos[(m.motif_id, split)] += int(truth.sum())
            # float products: a bool @ bool matmul would OR the counts into a single True
            acc[(m.motif_id, "tp", split)] += truth.astype(np.float32) @ base_fire
            acc[(m.motif_id, "tp_null", split)] += null.astype(np.float32) @ base_fire
    rows = []
    for m in motifs:
        whole = spans[m.motif_id][1]
        auc = {split: auroc_matrix(win_score[is_test == bool(split)], whole[is_test == bool(split)]) for split in (0, 1)}

        def prf(tp, split):
            p = tp / np.maximum(pp[split], 1)
            r = tp / max(npos[(m.motif_id, split)], 1)
            return p, r, 2 * p * r / np.maximum(p + r, 1e-12)

        _, _, f1_train = prf(acc[(m.motif_id, "tp", 0)], 0)
        best = int(np.argmax(f1_train))
        p, r, f1 = prf(acc[(m.motif_id, "tp", 1)], 1)
        _, _, f1n_train = prf(acc[(m.motif_id, "tp_null", 0)], 0)
        _, _, f1n = prf(acc[(m.motif_id, "tp_null", 1)], 1)
        best_auc = int(np.nanargmax(auc[0])) if np.isfinite(auc[0]).any() else best
        rows.append(dict(
            layer=layer, motif_id=m.motif_id, motif_name=m.motif_name, feature=best,
            precision=float(p[best]), recall=float(r[best]), f1=float(f1[best]), auroc=float(auc[1][best]),
            f1_null=float(f1n[int(np.argmax(f1n_train))]),
            best_auroc_feature=best_auc, best_auroc=float(auc[1][best_auc]),
            n_motif_bases_test=npos[(m.motif_id, 1)], n_windows_with_motif_test=int(whole[is_test].sum()),
            n_windows_test=int(is_test.sum()),
        ))
    return pd.DataFrame(rows)

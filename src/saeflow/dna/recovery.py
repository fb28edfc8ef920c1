"""Ground-truth recovery: does a single SAE feature find the planted motifs?

For each planted motif and each feature, at base level a base counts as
predicted when a token covering it fires (activation above a threshold chosen
on training sequences, see :func:`recovery_table`), and as true when it lies
in a planted instance; at window level a sequence is scored by the
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

from saeflow.activations import ActivationStore
from saeflow.dna.catalog import sequence_bounds
from saeflow.stats import auroc_rows


def auroc_matrix(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of each column of ``scores`` (n, F) for binary ``labels`` (ties count one half)."""
    scores = np.asarray(scores)
    return auroc_rows(np.asarray(labels).astype(bool), scores.T).reshape(scores.shape[1])


def planted_in_windows(sequences: pd.DataFrame, planted: pd.DataFrame, motif_id: str):
    """Per sequence: list of (start, end) of motif instances relative to the window; and a
    whole-instance flag."""
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


RECOVERY_COLUMNS = [
    "layer",
    "motif_id",
    "motif_name",
    "feature",
    "threshold",
    "threshold_fraction",
    "precision",
    "recall",
    "f1",
    "auroc",
    "f1_any",
    "f1_null",
    "best_auroc_feature",
    "best_auroc",
    "n_motif_bases_test",
    "n_windows_with_motif_test",
    "n_windows_test",
]
THRESHOLD_FRACTIONS = np.array([0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])


@torch.no_grad()
def recovery_table(
    sae,
    store: ActivationStore,
    layer: int,
    sequences: pd.DataFrame,
    planted: pd.DataFrame,
    seed: int = 0,
) -> pd.DataFrame:
    """Best single feature per planted motif (see the module docstring).

    A feature "fires" on a token when its activation exceeds a threshold
    tau = f * (its maximum activation on training sequences), with f from
    ``THRESHOLD_FRACTIONS`` (f = 0: any positive activation). The (feature, f)
    pair is chosen by base-level F1 on the training split; the table reports its
    held-out precision, recall, F1 and window-level AUROC, the held-out F1 of
    the same feature at f = 0 (``f1_any``), and the null F1 of the same selection
    against randomly moved motif intervals.
    """
    tokens = store.tokens
    bounds = sequence_bounds(tokens)
    arr = store.layer(layer)
    starts, ends = tokens.start.to_numpy(), tokens.end.to_numpy()
    n_seq, F = len(sequences), sae.d_sae
    is_test = (sequences.split == "test").to_numpy()
    rng = np.random.default_rng(seed)
    motifs = list(
        planted.drop_duplicates("motif_id")[["motif_id", "motif_name"]].itertuples(index=False)
    )
    spans = {m.motif_id: planted_in_windows(sequences, planted, m.motif_id) for m in motifs}

    def encode(s):
        lo, hi = bounds[s], bounds[s + 1]
        return (
            sae.encode(torch.from_numpy(np.asarray(arr[lo:hi], dtype=np.float32))).numpy(),
            lo,
            hi,
        )

    # pass 1: window scores (max activation per sequence), hence each feature's training maximum.
    # Pass 2 encodes again rather than caching codes: memory stays O(tokens of one sequence x
    # d_sae).
    win_score = np.zeros((n_seq, F), dtype=np.float32)
    for s in range(n_seq):
        if bounds[s + 1] > bounds[s]:
            win_score[s] = encode(s)[0].max(0)
    fmax = win_score[~is_test].max(0) if (~is_test).any() else win_score.max(0)
    thr = THRESHOLD_FRACTIONS[:, None] * fmax[None, :]  # (n_thr, F)
    n_thr = len(THRESHOLD_FRACTIONS)
    # pass 2: base-level counts for every (threshold, feature), per split; also against the null
    # truth
    acc = {
        (m.motif_id, kind, split): np.zeros(n_thr * F)
        for m in motifs
        for kind in ("tp", "tp_null")
        for split in (0, 1)
    }
    pp = {split: np.zeros(n_thr * F) for split in (0, 1)}
    npos = {(m.motif_id, split): 0 for m in motifs for split in (0, 1)}
    for s in range(n_seq):
        if bounds[s + 1] <= bounds[s]:
            continue
        z, lo, hi = encode(s)
        fire = (z[:, None, :] > thr[None]) & (z[:, None, :] > 0)  # (T, n_thr, F)
        L = int(ends[lo:hi].max())
        cover = np.zeros((L, hi - lo), dtype=np.float32)
        for t, (a, b) in enumerate(zip(starts[lo:hi], ends[lo:hi])):
            cover[a:b, t] = 1
        base_fire = ((cover @ fire.reshape(hi - lo, -1).astype(np.float32)) > 0).astype(np.float32)
        split = int(is_test[s])
        pp[split] += base_fire.sum(0)
        for m in motifs:
            truth = np.zeros(L, np.float32)
            null = np.zeros(L, np.float32)
            for a, b in spans[m.motif_id][0][s]:
                truth[a:b] = 1
                shift = int(rng.integers(0, max(1, L - (b - a))))
                null[shift : shift + (b - a)] = 1
            npos[(m.motif_id, split)] += int(truth.sum())
            # float products: a bool @ bool matmul would OR the counts into a single True
            acc[(m.motif_id, "tp", split)] += truth @ base_fire
            acc[(m.motif_id, "tp_null", split)] += null @ base_fire
    rows = []
    for m in motifs:
        whole = spans[m.motif_id][1]
        if npos[(m.motif_id, 0)] + npos[(m.motif_id, 1)] == 0:
            continue  # the motif is planted, but in none of this dataset's windows
        auc = {
            split: auroc_matrix(win_score[is_test == bool(split)], whole[is_test == bool(split)])
            for split in (0, 1)
        }

        def prf(kind, split):
            tp = acc[(m.motif_id, kind, split)]
            p = tp / np.maximum(pp[split], 1)
            r = tp / max(npos[(m.motif_id, split)], 1)
            return p, r, 2 * p * r / np.maximum(p + r, 1e-12)

        best = int(np.argmax(prf("tp", 0)[2]))
        p, r, f1 = prf("tp", 1)
        t_idx, feat = divmod(best, F)
        best_null = int(np.argmax(prf("tp_null", 0)[2]))
        f1_null = prf("tp_null", 1)[2][best_null]
        best_auc = int(np.nanargmax(auc[0])) if np.isfinite(auc[0]).any() else feat
        rows.append(
            dict(
                layer=layer,
                motif_id=m.motif_id,
                motif_name=m.motif_name,
                feature=feat,
                threshold=float(thr[t_idx, feat]),
                threshold_fraction=float(THRESHOLD_FRACTIONS[t_idx]),
                precision=float(p[best]),
                recall=float(r[best]),
                f1=float(f1[best]),
                auroc=float(auc[1][feat]),
                f1_any=float(f1[feat]),
                f1_null=float(f1_null),
                best_auroc_feature=best_auc,
                best_auroc=float(auc[1][best_auc]),
                n_motif_bases_test=npos[(m.motif_id, 1)],
                n_windows_with_motif_test=int(whole[is_test].sum()),
                n_windows_test=int(is_test.sum()),
            )
        )
    return pd.DataFrame(rows, columns=RECOVERY_COLUMNS)

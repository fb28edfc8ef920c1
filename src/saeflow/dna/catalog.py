"""Feature catalog of one SAE on one layer: frequencies, top tokens and contexts, SVD comparison."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from saeflow.activations import ActivationStore
from saeflow.decoder import decoder_rows
from saeflow.stats import sample_rows

log = logging.getLogger(__name__)

#: Per-layer summary columns, as in the Geneformer results of the seeds (plus layer and L0).


def sequence_bounds(tokens: pd.DataFrame) -> np.ndarray:
    """Row offsets of each sequence in the token index (rows are grouped by sequence)."""
    seq = tokens.seq.to_numpy()
    n_seq = int(seq.max()) + 1 if len(seq) else 0
    return np.searchsorted(seq, np.arange(n_seq + 1))


@torch.no_grad()
def encode_chunks(sae, store: ActivationStore, layer: int, chunk: int = 8192):
    for rows, x in store.iter_chunks(layer, chunk=chunk):
        yield rows, sae.encode(torch.from_numpy(x))


@torch.no_grad()
def feature_statistics(
    sae, store: ActivationStore, layer: int, top_n: int = 20, hist: np.ndarray | None = None
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """One streaming pass: frequency, mean/max activation, and the top-N activating token rows per
    feature.

    ``hist``: optional (d_sae x :data:`saeflow.histogram.N_BINS`) counts, filled in place with each
    feature's activation histogram."""
    from saeflow import histogram

    F = sae.d_sae
    fires = torch.zeros(F, dtype=torch.float64)
    total = torch.zeros(F, dtype=torch.float64)
    best_v = torch.full((top_n, F), -1.0)
    best_r = torch.full((top_n, F), -1, dtype=torch.long)
    n = 0
    for rows, z in encode_chunks(sae, store, layer):
        n += len(rows)
        fires += (z > 0).double().sum(0)
        if hist is not None:
            r, f = (z > 0).nonzero(as_tuple=True)
            histogram.accumulate(hist, f.numpy(), z[r, f].double().numpy())
        total += z.double().sum(0)
        vals = torch.cat([best_v, z])
        idx = torch.cat([best_r, torch.from_numpy(rows).long()[:, None].expand(-1, F)])
        k = min(top_n, len(vals))
        v, i = vals.topk(k, dim=0)
        best_v, best_r = v, idx.gather(0, i)
    freq = (fires / max(n, 1)).numpy()
    mean_act = (total / fires.clamp_min(1)).numpy()
    df = pd.DataFrame(
        {
            "feature": np.arange(F),
            "frequency": freq,
            "mean_activation": mean_act,
            "max_activation": best_v[0].numpy().clip(min=0),
        }
    )
    return df, best_v.numpy(), best_r.numpy()


def svd_alignment(
    decoder: np.ndarray, acts: np.ndarray, n_components: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Max |cos| of each decoder row with the top right singular vectors of centred activations."""
    x = acts - acts.mean(0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    v = vt[: min(n_components, vt.shape[0])]
    w = decoder / np.linalg.norm(decoder, axis=1, keepdims=True).clip(1e-12)
    return np.abs(w @ v.T).max(axis=1), s


def mark_context(seq: str, start: int, end: int, fire_mask: np.ndarray, context: int) -> str:
    """The window around [start, end) with bases where the feature fires in UPPER case, others
    lower."""
    lo, hi = max(0, start - context), min(len(seq), end + context)
    return "".join(
        c.upper() if fire_mask[i] else c.lower() for i, c in zip(range(lo, hi), seq[lo:hi])
    )


@torch.no_grad()
def build_catalog(
    sae,
    store: ActivationStore,
    layer: int,
    sequences: pd.DataFrame,
    tokenizer_vocab: dict[int, str],
    params: dict,
    sae_metrics: dict,
    hist: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict, np.ndarray]:
    """Returns (features, contexts, summary, singular values); ``hist`` as in
    :func:`feature_statistics`."""
    top_n, n_ctx = int(params["top_n"]), int(params["n_contexts"])
    feats, best_v, best_r = feature_statistics(sae, store, layer, top_n, hist=hist)
    tokens = store.tokens
    tok_ids = tokens.token_id.to_numpy()
    bounds = sequence_bounds(tokens)
    # top tokens: the token strings among each feature's top instances
    top_tokens = []
    for f in range(sae.d_sae):
        r = best_r[:, f][best_v[:, f] > 0]
        names, counts = np.unique(
            [tokenizer_vocab.get(int(t), str(t)) for t in tok_ids[r]], return_counts=True
        )
        order = np.argsort(-counts)[:5]
        top_tokens.append(",".join(f"{names[i]}:{counts[i]}" for i in order))
    feats["top_tokens"] = top_tokens
    # contexts: re-encode the whole sequence of each top instance to mark every firing base
    arr = store.layer(layer)
    rows_ctx = []
    seqs = sequences.sequence.to_numpy()
    for f in np.flatnonzero(feats.frequency.to_numpy() > 0):
        for rank in range(min(n_ctx, top_n)):
            v, r = best_v[rank, f], best_r[rank, f]
            if v <= 0:
                break
            s = int(tokens.seq.iat[r])
            lo, hi = bounds[s], bounds[s + 1]
            z = sae.encode(torch.from_numpy(np.asarray(arr[lo:hi], dtype=np.float32)))[:, f].numpy()
            seq = seqs[s]
            mask = np.zeros(len(seq), bool)
            for a, b, zz in zip(tokens.start.to_numpy()[lo:hi], tokens.end.to_numpy()[lo:hi], z):
                if zz > 0:
                    mask[a:b] = True
            ts, te = int(tokens.start.iat[r]), int(tokens.end.iat[r])
            rows_ctx.append(
                dict(
                    feature=int(f),
                    rank=rank,
                    activation=float(v),
                    sequence=sequences.name.iat[s],
                    token=tokenizer_vocab.get(int(tok_ids[r]), "?"),
                    start=ts,
                    end=te,
                    context=mark_context(seq, ts, te, mask, int(params["context"])),
                )
            )
    contexts = pd.DataFrame(
        rows_ctx,
        columns=["feature", "rank", "activation", "sequence", "token", "start", "end", "context"],
    )
    # SVD comparison on a sample of rows
    rows = sample_rows(arr.shape[0], int(params["svd_sample"]), 0)
    sample = np.asarray(arr[rows], dtype=np.float32)
    decoder = decoder_rows(sae)
    maxcos, _sv = svd_alignment(decoder, sample, int(params["svd_components"]))
    feats["svd_max_cos"] = maxcos
    alive = feats.frequency.to_numpy() > 0
    feats["alive"] = alive
    feats["svd_aligned"] = alive & (maxcos > params["svd_threshold"])
    summary = {
        "layer": layer,
        "VarExpl": sae_metrics.get("explained_variance"),
        "L0": sae_metrics.get("l0"),
        "Alive": int(alive.sum()),
        "Dead": int((~alive).sum()),
        "SVD-aligned": int(feats.svd_aligned.sum()),
        "Novel": int((alive & ~feats.svd_aligned).sum()),
        "MeanCos": float(maxcos[alive].mean()) if alive.any() else float("nan"),
    }
    return feats, contexts, summary, _sv

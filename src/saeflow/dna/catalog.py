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


#: token rows encoded at once when the contexts' sequences are re-encoded
CONTEXT_CHUNK = 8192


def context_batches(seq_ids: list[int], bounds: np.ndarray, chunk: int) -> list[list[int]]:
    """``seq_ids`` in groups of at most ``chunk`` token rows (a sequence longer than ``chunk`` is a
    group of its own): each group's rows are read from the store and encoded at once."""
    out: list[list[int]] = []
    rows = 0
    for s in seq_ids:
        n = int(bounds[s + 1] - bounds[s])
        if out and rows + n <= chunk:
            out[-1].append(s)
            rows += n
        else:
            out.append([s])
            rows = n
    return out


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
    # contexts: every firing base of the feature in the sequence of each top instance. Each such
    # sequence is encoded once (in batches of whole sequences) for all the features that need it,
    # not once per (feature, rank): at d_sae = 6,144 that was 30,000 encodes of one sequence each.
    arr = store.layer(layer)
    seqs = sequences.sequence.to_numpy()
    starts, ends, tok_seq = (tokens[c].to_numpy() for c in ("start", "end", "seq"))
    wanted = [  # (sequence, feature, rank, activation, row)
        (int(tok_seq[r]), int(f), rank, float(best_v[rank, f]), int(r))
        for f in np.flatnonzero(feats.frequency.to_numpy() > 0)
        for rank in range(min(n_ctx, top_n))
        if best_v[rank, f] > 0
        for r in [best_r[rank, f]]
    ]
    by_seq: dict[int, list] = {}
    for w in wanted:
        by_seq.setdefault(w[0], []).append(w)
    rows_ctx = []
    for batch in context_batches(sorted(by_seq), bounds, CONTEXT_CHUNK):
        x = np.concatenate([arr[bounds[s] : bounds[s + 1]] for s in batch]).astype(np.float32)
        z = sae.encode(torch.from_numpy(x)).numpy()
        offset = 0
        for s in batch:
            lo, hi = bounds[s], bounds[s + 1]
            zs, offset = z[offset : offset + hi - lo], offset + hi - lo
            seq = seqs[s]
            for _, f, rank, v, r in by_seq[s]:
                mask = np.zeros(len(seq), bool)
                fire = zs[:, f] > 0
                for ts, te in zip(starts[lo:hi][fire], ends[lo:hi][fire]):
                    mask[ts:te] = True
                ts, te = int(starts[r]), int(ends[r])
                rows_ctx.append(
                    dict(
                        feature=f,
                        rank=rank,
                        activation=v,
                        sequence=sequences.name.iat[s],
                        token=tokenizer_vocab.get(int(tok_ids[r]), "?"),
                        start=ts,
                        end=te,
                        context=mark_context(seq, ts, te, mask, int(params["context"])),
                    )
                )
    rows_ctx.sort(key=lambda d: (d["feature"], d["rank"]))
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

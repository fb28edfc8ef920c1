"""DNA mechanistic evidence over a run's activations, model and SAEs: the glue the evidence rules
call.

Each function reads what a rule has (the sequence table, the activation store, a model adapter, an
SAE) and returns tidy tables; the statistics live in the modules they call:

* :func:`motif_tokens` -- JASPAR sites on both strands (:mod:`saeflow.dna.motifscan`) mapped onto
every
  token of the activation store through its base spans, with each token's GC content;
* :func:`run_probes` -- per layer, a sequence-level probe (mean-pooled activations -> the dataset's
  label) and a token-level probe per motif (token activation -> token overlaps a hit), each with the
  controls of :func:`saeflow.dna.probes.probe_with_controls` and the paired AUROC deltas;
* :func:`head_scan` -- every layer x head: QK correlation and GC-matched attention enrichment
  (:mod:`saeflow.dna.headscan`), computed from the attention each token receives, batch by batch;
  the correlation's p-values are BH-corrected over the whole layer x head x motif table;
* :func:`patching` -- counterfactual pairs (:mod:`saeflow.dna.counterfactual`), a readout trained on
the
  clean model (a logistic probe of the dataset's label on the last layer, mean-pooled), then one
  forward pass per (layer, head) over a whole batch of corrupted sequences with that head's clean
  output patched in, and one per layer with the clean residual stream patched in at the site's
  tokens;
* :func:`feature_pass` -- one pass of an SAE over a layer: firing frequency, per-sequence mean
  activations (for :func:`saeflow.dna.differential.differential_features`) and per-feature motif
  AUROCs (the best feature per motif is selected on training sequences and reported on held-out
  ones);
* :func:`feature_ablation` -- a motif feature's ablation (error term kept,
:mod:`saeflow.sae.ablation`),
  its effect on the masked-LM output distribution (KL per token) at the tokens where it fires vs
  elsewhere, against frequency-matched random features.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from saeflow.dna.sequence import token_gc
from saeflow.utils import SaeflowError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------- motifs


@dataclass(frozen=True)
class ScoredMotif:
    matrix_id: str
    name: str
    pssm: np.ndarray  # (L, 4)
    threshold: float  # absolute score of a hit

    @property
    def length(self) -> int:
        return self.pssm.shape[0]


def load_motifs(
    ids, release: str = "JASPAR2024", pseudocount: float = 0.8, frac: float = 0.8
) -> list[ScoredMotif]:
    """The JASPAR matrices ``ids`` as PSSMs with their hit thresholds (a fraction of the score
    range)."""
    from saeflow.dna.motifs import load_jaspar
    from saeflow.dna.motifscan import pssm, relative_threshold

    out = []
    for mid in ids:
        m = load_jaspar(mid, release)
        p = pssm(m.counts, pseudocount=pseudocount)
        out.append(ScoredMotif(mid, m.name, p, float(relative_threshold(p, frac))))
    return out


def _check_sequences(sequences: pd.DataFrame, what: str = "sequence table") -> None:
    missing = {"sequence", "label", "split"} - set(sequences.columns)
    if missing:
        raise SaeflowError(f"{what} lacks column(s) {sorted(missing)}")


def _padded_offsets(tokens: pd.DataFrame, n_seq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, Tmax, 2) base spans from the flat token index, and each row's (seq, column) in it."""
    seq = tokens.seq.to_numpy().astype(np.int64)
    if len(seq) and (np.diff(seq) < 0).any():
        raise SaeflowError("token index rows are not grouped by sequence")
    counts = np.bincount(seq, minlength=n_seq)
    first = np.concatenate([[0], np.cumsum(counts)])[:-1]
    col = np.arange(len(seq)) - first[seq]
    off = np.zeros((n_seq, max(int(counts.max()) if len(counts) else 0, 1), 2), np.int64)
    off[seq, col, 0] = tokens.start.to_numpy()
    off[seq, col, 1] = tokens.end.to_numpy()
    return off, seq, col


def motif_tokens(
    sequences: pd.DataFrame, tokens: pd.DataFrame, motifs: list[ScoredMotif]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per token of the activation store: its GC and, per motif, the best overlapping site score and
    hit flag.

    Returns (token table with columns seq, pos, start, end, gc, ``<id>_score``, ``<id>_hit``; rows
    in the store's order) and the hits (motif, seq, name, start, end, strand, score, rel_score).
    """
    from saeflow.dna.motifscan import hits, scan, token_scores

    _check_sequences(sequences)
    if len(tokens) and tokens.seq.max() >= len(sequences):
        raise SaeflowError(
            f"token index refers to sequence {tokens.seq.max()} but the table has {len(sequences)}"
        )
    seqs = sequences.sequence.astype(str).tolist()
    off, seq, col = _padded_offsets(tokens, len(seqs))
    out = tokens[["seq", "pos", "start", "end"]].copy().reset_index(drop=True)
    out["gc"] = token_gc(seqs, seq, tokens.start.to_numpy(), tokens.end.to_numpy())
    site_tables = []
    for m in motifs:
        res = scan(seqs, m.pssm)
        ts = token_scores(res, off)[seq, col]
        out[f"{m.matrix_id}_score"] = np.where(np.isfinite(ts), ts, np.nan).astype(np.float32)
        out[f"{m.matrix_id}_hit"] = ts >= np.float32(m.threshold)
        h = hits(res, m.pssm, threshold=m.threshold, best_strand=True)
        h.insert(0, "motif", m.matrix_id)
        h.insert(
            2, "name", sequences.name.to_numpy()[h.seq.to_numpy()] if "name" in sequences else h.seq
        )
        site_tables.append(h)
        log.info(
            "%s (%s): %d hits in %d of %d sequences; %d of %d tokens overlap one",
            m.matrix_id,
            m.name,
            len(h),
            h.seq.nunique(),
            len(seqs),
            int(out[f"{m.matrix_id}_hit"].sum()),
            len(out),
        )
    return out, pd.concat(site_tables, ignore_index=True)


def motif_ids(table: pd.DataFrame) -> list[str]:
    return [c[:-4] for c in table.columns if c.endswith("_hit")]


# --------------------------------------------------------------------------------- pooled
# activations


def pooled_means(store, layer: int, n_seq: int, transform=None, chunk: int = 16384) -> np.ndarray:
    """(n_seq, d) mean over each sequence's tokens of the layer (or of ``transform(block)``, e.g.
    SAE codes)."""
    seq = store.tokens.seq.to_numpy()
    sums, counts = None, np.bincount(seq, minlength=n_seq).astype(np.float64)
    for rows, x in store.iter_chunks(layer, chunk=chunk):
        x = transform(x) if transform is not None else x
        if sums is None:
            sums = np.zeros((n_seq, x.shape[1]), np.float64)
        s = seq[rows]
        cut = np.flatnonzero(np.diff(s)) + 1
        starts = np.concatenate([[0], cut])
        sums[s[starts]] += np.add.reduceat(x.astype(np.float64), starts, axis=0)
    if sums is None:
        raise SaeflowError(f"{store.dir}: no tokens in layer {layer}")
    return sums / np.maximum(counts, 1)[:, None]


def _sample_sequences(
    n_seq: int, counts: np.ndarray, max_tokens: int, seed: int, eligible=None
) -> np.ndarray:
    """A seeded sample of whole sequences holding at most ``max_tokens`` tokens (sorted)."""
    order = np.random.default_rng(seed).permutation(n_seq)
    if eligible is not None:
        order = order[eligible[order]]
    keep = order[np.cumsum(counts[order]) <= max_tokens]
    return np.sort(keep if len(keep) else order[:1])


# --------------------------------------------------------------------------------- probes


PROBE_COLUMNS = [
    "layer",
    "level",
    "target",
    "control",
    "auroc",
    "ci_low",
    "ci_high",
    "accuracy",
    "n_train",
    "n_test",
    "delta_auroc",
    "delta_ci_low",
    "delta_ci_high",
    "note",
]


def _probe_rows(
    X, y, seqs, split, positions, *, layer, level, target, seed, n_boot, items=None, preds=None
) -> list[dict]:
    from saeflow.dna.probes import delta_vs_control, probe_with_controls

    base = dict(layer=int(layer), level=level, target=target)
    ytr, yte = y[split == "train"], y[split == "test"]
    if len(np.unique(ytr)) < 2 or len(np.unique(yte)) < 2 or min(ytr.sum(), yte.sum()) < 5:
        return [
            dict(
                base,
                control="features",
                auroc=np.nan,
                n_train=len(ytr),
                n_test=len(yte),
                note=(
                    f"skipped: {int(ytr.sum())} train / {int(yte.sum())} test positives "
                    "(need >= 5 each)"
                ),
            )
        ]
    df = probe_with_controls(X, y, seqs, split, positions=positions, seed=seed, n_boot=n_boot)
    # test-set scores, for paired comparisons across runs
    if preds is not None and items is not None:
        for control, sc in df.attrs["scores"].items():
            preds.append(
                pd.DataFrame(
                    {
                        "layer": int(layer),
                        "level": level,
                        "target": target,
                        "control": control,
                        "item": np.asarray(items)[sc["index"]],
                        "label": sc["y"],
                        "score": sc["score"],
                    }
                )
            )
    d = delta_vs_control(df).set_index("control")
    rows = []
    for r in df.to_dict("records"):
        c = r["control"]
        dd = d.loc[c] if c in d.index else None
        rows.append(
            dict(
                base,
                **r,
                delta_auroc=np.nan if dd is None else dd.delta_auroc,
                delta_ci_low=np.nan if dd is None else dd.ci_low,
                delta_ci_high=np.nan if dd is None else dd.ci_high,
            )
        )
    return rows


def run_probes(
    store,
    sequences: pd.DataFrame,
    mtok: pd.DataFrame,
    layers,
    *,
    max_tokens: int = 50000,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sequence-level (label) and token-level (per motif: overlaps a hit) probes with controls, per
    layer.

    Returns (the AUROC table, one row per probe x control; the sequence-level test predictions:
    layer, level, target, control, item (the sequence's name), label, score -- the same items in
    every run of
    the dataset, so two models' probes can be compared pairwise)."""
    _check_sequences(sequences)
    n_seq = len(sequences)
    tokens = store.tokens
    if len(tokens) != len(mtok):
        raise SaeflowError(
            f"motif token table has {len(mtok)} rows but the activation store {len(tokens)} tokens"
        )
    y_seq = sequences.label.to_numpy().astype(int)
    split_seq = sequences.split.astype(str).to_numpy()
    seqs = sequences.sequence.astype(str).tolist()
    positions = None
    if "start" in sequences and sequences.start.notna().all():
        chrom = pd.factorize(sequences.chrom)[0] if "chrom" in sequences else np.zeros(n_seq)
        positions = np.column_stack([chrom, sequences.start.to_numpy(dtype=float) / 1e6])
    # token probes: a seeded sample of whole train/test sequences
    counts = np.bincount(tokens.seq.to_numpy(), minlength=n_seq)
    picked = _sample_sequences(
        n_seq, counts, max_tokens, seed, eligible=np.isin(split_seq, ["train", "test"])
    )
    rows_tok = np.flatnonzero(np.isin(tokens.seq.to_numpy(), picked))
    tseq = tokens.seq.to_numpy()[rows_tok]
    tsplit = split_seq[tseq]
    tstrings = [
        seqs[s][a:b]
        for s, a, b in zip(tseq, tokens.start.to_numpy()[rows_tok], tokens.end.to_numpy()[rows_tok])
    ]
    tpos = tokens.pos.to_numpy()[rows_tok].astype(float)[:, None]
    out, preds = [], []
    use = np.isin(split_seq, ["train", "test"])
    names = (
        (sequences.name if "name" in sequences else pd.Series(np.arange(n_seq)))
        .astype(str)
        .to_numpy()[use]
    )
    for layer in layers:
        X = pooled_means(store, layer, n_seq)
        out += _probe_rows(
            X[use],
            y_seq[use],
            [s for s, u in zip(seqs, use) if u],
            split_seq[use],
            None if positions is None else positions[use],
            layer=layer,
            level="sequence",
            target="label",
            seed=seed,
            n_boot=n_boot,
            items=names,
            preds=preds,
        )
        Xt = np.asarray(store.layer(layer)[rows_tok], dtype=np.float32)
        for mid in motif_ids(mtok):
            yt = mtok[f"{mid}_hit"].to_numpy()[rows_tok].astype(int)
            out += _probe_rows(
                Xt,
                yt,
                tstrings,
                tsplit,
                tpos,
                layer=layer,
                level="token",
                target=mid,
                seed=seed,
                n_boot=n_boot,
            )
        log.info("layer %d probed", layer)
    pred_cols = ["layer", "level", "target", "control", "item", "label", "score"]
    return (
        pd.DataFrame(out).reindex(columns=PROBE_COLUMNS),
        pd.concat(preds, ignore_index=True) if preds else pd.DataFrame(columns=pred_cols),
    )


# --------------------------------------------------------------------------------- model passes


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def _seeded_subset(n: int, k: int, seed: int, eligible=None) -> np.ndarray:
    idx = np.arange(n) if eligible is None else np.flatnonzero(eligible)
    if len(idx) > k:
        idx = np.sort(np.random.default_rng(seed).choice(idx, k, replace=False))
    return idx


def head_scan(
    adapter,
    sequences: pd.DataFrame,
    motifs: list[ScoredMotif],
    *,
    n_sequences: int = 1000,
    batch_size: int = 32,
    seed: int = 0,
    n_boot: int = 1000,
) -> pd.DataFrame:
    """Every layer x head x motif: r, p, q, rho (+ CI) and the registered criteria (see
    :mod:`saeflow.dna.headscan`).

    ``q`` is BH over the whole table (every layer x head x motif is one family,
    :func:`saeflow.dna.headscan.scan_table`), so ``passes`` is r >= 0.5, q < 0.05 and rho >= 2.
    Reads a seeded sample of ``n_sequences`` sequences; each batch's attention is reduced at once to
    the attention each token receives, so memory is O(sequences x heads x tokens) per layer.
    """
    import torch
    from tqdm.auto import tqdm

    from saeflow.dna.headscan import scan_table
    from saeflow.dna.motifscan import scan, token_scores
    from saeflow.models.base import Capture

    _check_sequences(sequences)
    pick = _seeded_subset(len(sequences), n_sequences, seed)
    seqs = sequences.sequence.astype(str).to_numpy()[pick].tolist()
    layers = list(range(1, adapter.n_layers + 1))
    recv = {lyr: [] for lyr in layers}
    mscore = {m.matrix_id: [] for m in motifs}
    valid, gcs = [], []
    for sl in tqdm(list(_batches(len(seqs), batch_size)), desc="head scan", mininterval=5):
        batch = seqs[sl]
        tb = adapter.tokenize(batch)
        with torch.inference_mode():
            res = adapter.run(tb, Capture(attn=layers))
        v = ~tb.special
        q = torch.from_numpy(v).to(res.attn[layers[0]].device)
        n = q.sum(1).clamp_min(1)[:, None, None].to(torch.float32)
        for lyr in layers:
            a = res.attn[lyr].float()
            recv[lyr].append(((a * q[:, None, :, None]).sum(2) / n).cpu().numpy())
        off = tb.offsets
        bi = np.repeat(np.arange(len(batch)), off.shape[1]).reshape(off.shape[:2])
        gcs.append(
            np.where(
                v,
                token_gc(batch, bi.ravel(), off[..., 0].ravel(), off[..., 1].ravel()).reshape(
                    v.shape
                ),
                0.0,
            )
        )
        valid.append(v)
        for m in motifs:
            mscore[m.matrix_id].append(token_scores(scan(batch, m.pssm), off))
    T = max(x.shape[1] for x in valid)

    def cat(parts, fill, dtype):
        out = []
        for p in parts:
            pad = [(0, 0)] * p.ndim
            pad[-1] = (0, T - p.shape[-1])
            out.append(np.pad(p.astype(dtype), pad, constant_values=fill))
        return np.concatenate(out, axis=0)

    valid_all = cat(valid, False, bool)
    gc_all = cat(gcs, 0.0, np.float64)
    for lyr in layers:  # float32 as captured; scan_received takes each layer to float64 in turn
        recv[lyr] = cat(recv[lyr], 0.0, np.float32)
    # one table, one family: q is BH over every layer x head x motif
    out = scan_table(
        recv,
        {m.matrix_id: (cat(mscore[m.matrix_id], -np.inf, np.float64), m.threshold) for m in motifs},
        valid_all,
        gc_all,
        n_boot=n_boot,
        seed=seed,
    )
    out["n_sequences"] = len(seqs)
    return out


def _mean_pool(h, valid):

    v = valid.to(h.dtype)[..., None]
    return (h * v).sum(1) / v.sum(1).clamp_min(1)


def train_readout(
    adapter,
    sequences: pd.DataFrame,
    *,
    max_sequences: int = 2000,
    batch_size: int = 32,
    seed: int = 0,
):
    """A logistic probe of the label on the last layer's mean-pooled residual stream (training
    sequences).

    Returns (w, b, held-out AUROC): the readout ``h @ w + b`` the patching metric is computed on.
    """
    import torch
    from sklearn.linear_model import LogisticRegression

    from saeflow.models.base import Capture
    from saeflow.stats import auroc

    L = adapter.n_layers
    feats = {}
    for part in ("train", "test"):
        idx = _seeded_subset(
            len(sequences), max_sequences, seed, sequences.split.astype(str).to_numpy() == part
        )
        seqs = sequences.sequence.astype(str).to_numpy()[idx].tolist()
        xs = []
        for sl in _batches(len(seqs), batch_size):
            tb = adapter.tokenize(seqs[sl])
            with torch.inference_mode():
                h = adapter.run(tb, Capture(resid=[L])).resid[L].float()
            xs.append(_mean_pool(h, torch.from_numpy(~tb.special).to(h.device)).cpu().numpy())
        feats[part] = (
            np.concatenate(xs) if xs else np.zeros((0, adapter.d_model)),
            sequences.label.to_numpy()[idx].astype(int),
        )
    (Xtr, ytr), (Xte, yte) = feats["train"], feats["test"]
    if len(np.unique(ytr)) < 2:
        raise SaeflowError("patching readout: the training sequences hold one label only")
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=5000, random_state=seed).fit((Xtr - mu) / sd, ytr)
    w = clf.coef_[0] / sd
    b = float(clf.intercept_[0] - (mu * w).sum())
    auc = auroc(yte, Xte @ w + b) if len(np.unique(yte)) == 2 else float("nan")
    return w.astype(np.float32), b, float(auc)


def patching(
    adapter,
    pairs: pd.DataFrame,
    w: np.ndarray,
    b: float,
    *,
    batch_size: int = 32,
    min_gap: float = 0.05,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Activation patching of every (layer, head) and every layer's residual stream at the site's
    tokens.

    Components: ``head`` (one head's clean output into the corrupted run), ``resid_at_site`` (the
    clean residual stream at the tokens overlapping the destroyed site) and its control
    ``resid_off_site`` (the clean residual stream at as many other tokens of the sequence, drawn
    with a per-pair seed): where the motif's information sits at its own tokens, the first restores
    the readout and the second does not.

    ``pairs``: rows of :func:`saeflow.dna.counterfactual.counterfactual_pairs` (clean, corrupted,
    start, end). The readout is ``mean-pooled last layer @ w + b``. Pairs whose clean and corrupted
    sequences do not tokenise to the same spans are dropped (patching by position would be
    meaningless). Returns (per-pair table: pair, component, layer, head, clean, corrupted, patched,
    pm) and the pair table with ``kept`` and ``gap``.
    """
    import torch
    from tqdm.auto import tqdm

    from saeflow.dna.counterfactual import patching_metric
    from saeflow.models.base import Capture, Patch

    L, H = adapter.n_layers, adapter.n_heads
    pairs = pairs[pairs.corrupted.notna()].reset_index(drop=True)
    wt = torch.from_numpy(np.asarray(w, np.float32)).to(adapter.device)

    def readout(res, v):
        return (_mean_pool(res.resid[L].float(), v) @ wt + b).cpu().numpy().astype(np.float64)

    recs, kept = [], np.zeros(len(pairs), bool)
    gaps = np.full(len(pairs), np.nan)
    for sl in tqdm(list(_batches(len(pairs), batch_size)), desc="patching", mininterval=5):
        part = pairs.iloc[sl]
        tc = adapter.tokenize(part.clean.tolist())
        tx = adapter.tokenize(part.corrupted.tolist())
        same = same_spans(tc, tx, part.start.to_numpy(), part.end.to_numpy())
        if not same.any():
            continue
        ok = np.flatnonzero(same)
        kept[np.arange(sl.start, sl.stop)[ok]] = True
        if tc.offsets.shape == tx.offsets.shape:
            tc, tx = _subset(tc, ok), _subset(tx, ok)
        else:  # a pair elsewhere in the batch tokenised longer: re-pad the kept pairs to one width
            tc = adapter.tokenize(part.clean.iloc[ok].tolist())
            tx = adapter.tokenize(part.corrupted.iloc[ok].tolist())
        v = torch.from_numpy(~tc.special).to(adapter.device)
        st, en = part.start.to_numpy()[ok], part.end.to_numpy()[ok]
        # the site's tokens: those over the site in either sequence (a BPE tokeniser may split it
        # differently)
        site = torch.from_numpy(
            (
                (tc.offsets[..., 0] < en[:, None]) & (tc.offsets[..., 1] > st[:, None])
                | (tx.offsets[..., 0] < en[:, None]) & (tx.offsets[..., 1] > st[:, None])
            )
            & ~tc.special
        )
        # control: as many tokens elsewhere in the sequence (seeded per pair), clean there too
        off = np.zeros_like(site.numpy())
        for j, i in enumerate(np.arange(sl.start, sl.stop)[ok]):
            cand = np.flatnonzero(~site[j].numpy() & ~tc.special[j])
            k = min(int(site[j].sum()), len(cand))
            off[j, np.random.default_rng(seed + int(i)).choice(cand, k, replace=False)] = True
        site, off = site.to(adapter.device), torch.from_numpy(off).to(adapter.device)
        with torch.inference_mode():
            rc = adapter.run(
                tc, Capture(resid=list(range(0, L + 1)), head_out=list(range(1, L + 1)))
            )
            clean = readout(rc, v)
            corrupted = readout(adapter.run(tx, Capture(resid=[L])), v)
            heads, resid = [], []
            # grouped by depth, each group reusing the corrupted run's blocks below it: residual
            # layer `layer` (patched at its output) and the heads of block layer + 1 (patched
            # inside it) need only the blocks above `layer`
            for layer in range(0, L + 1):
                with adapter.reusing_prefix(layer):
                    cr = rc.resid[layer]
                    for comp, where in (("resid_at_site", site), ("resid_off_site", off)):

                        def put(t, cr=cr, where=where):
                            return torch.where(where[..., None], cr.to(t.dtype), t)

                        r = adapter.run(tx, Capture(resid=[L]), Patch(resid={layer: put}))
                        resid.append((comp, layer, -1, readout(r, v)))
                    for h in range(H) if layer < L else ():
                        ho = rc.head_out[layer + 1][:, :, h, :]
                        patch = Patch(heads={(layer + 1, h): ho})
                        r = adapter.run(tx, Capture(resid=[L]), patch)
                        heads.append(("head", layer + 1, h, readout(r, v)))
            outs = heads + resid
        gaps[np.arange(sl.start, sl.stop)[ok]] = clean - corrupted
        for comp, layer, h, patched in outs:
            pm, _ = patching_metric(patched, corrupted, clean, min_gap=min_gap)
            for j, i in enumerate(np.arange(sl.start, sl.stop)[ok]):
                recs.append((int(i), comp, layer, h, clean[j], corrupted[j], patched[j], pm[j]))
    per_pair = pd.DataFrame(
        recs, columns=["pair", "component", "layer", "head", "clean", "corrupted", "patched", "pm"]
    )
    pairs = pairs.assign(kept=kept, gap=gaps)
    return per_pair, pairs


def same_spans(tc, tx, starts=None, ends=None) -> np.ndarray:
    """Per row: can two tokenisations (possibly padded to different widths) be patched position by
    position? The same number of tokens, the same special tokens, and identical spans at every token
    that does not overlap the row's site ``[starts, ends)`` (given; without a site, at every token).

    BPE tokenisers (DNABERT-2) may split the motif-destroyed site differently (its tokens then
    differ, which is the point of the pair) or re-segment beyond it, or change the token count: such
    a pair cannot be patched position by position, and must not break the rest of its batch.
    """
    w = max(tc.offsets.shape[1], tx.offsets.shape[1])

    def pad(t):
        k = w - t.offsets.shape[1]
        off = np.pad(t.offsets, ((0, 0), (0, k), (0, 0)), constant_values=-1)
        sp = np.pad(t.special, ((0, 0), (0, k)), constant_values=True)
        m = np.pad(np.asarray(t.attention_mask, bool), ((0, 0), (0, k)), constant_values=False)
        return np.where(m[..., None], off, -1), sp | ~m, m

    (oc, sc, mc), (ox, sx, mx) = pad(tc), pad(tx)
    same_tok = (oc == ox).all(axis=2)
    if starts is not None:
        st, en = np.asarray(starts)[:, None], np.asarray(ends)[:, None]
        at_site = (
            ((oc[..., 0] < en) & (oc[..., 1] > st) | (ox[..., 0] < en) & (ox[..., 1] > st))
            & ~sc
            & ~sx
        )
        same_tok |= at_site
    return same_tok.all(axis=1) & (sc == sx).all(axis=1) & (mc == mx).all(axis=1)


def _subset(tb, idx):
    from dataclasses import replace

    return replace(
        tb,
        input_ids=tb.input_ids[idx],
        attention_mask=tb.attention_mask[idx],
        offsets=tb.offsets[idx],
        special=tb.special[idx],
        genes=None if tb.genes is None else tb.genes[idx],
        extra={k: v[idx] for k, v in tb.extra.items()},
    )


def summarise_patching(per_pair: pd.DataFrame) -> pd.DataFrame:
    """Distribution of PM per component: mean, median, quartiles, fraction of pairs > 0.5, pairs
    with a PM."""

    def q(p):
        return lambda s: s.quantile(p) if s.notna().any() else np.nan

    g = per_pair.groupby(["motif", "component", "layer", "head"], sort=True)["pm"]
    out = g.agg(
        mean_pm="mean",
        median_pm="median",
        q25=q(0.25),
        q75=q(0.75),
        frac_above_half=lambda s: float((s > 0.5).mean()) if s.notna().any() else np.nan,
        n_pairs="count",
    ).reset_index()
    return out


# --------------------------------------------------------------------------------- SAE features


def feature_pass(
    sae,
    store,
    layer: int,
    sequences: pd.DataFrame,
    mtok: pd.DataFrame | None,
    *,
    max_tokens: int = 50000,
    seed: int = 0,
    chunk: int = 8192,
):
    """One pass of the SAE over the layer.

    Returns (features table: feature, frequency, and per motif ``<id>_auroc_train`` /
    ``<id>_auroc_test``
    of the token activation against the token overlapping a hit, on a seeded sample of whole
    sequences; per-sequence mean activations (n_seq, F)).
    """
    import torch

    from saeflow.dna.recovery import auroc_matrix

    n_seq = len(sequences)
    tokens = store.tokens
    seq = tokens.seq.to_numpy()
    split_seq = sequences.split.astype(str).to_numpy()
    counts = np.bincount(seq, minlength=n_seq)
    picked = np.zeros(n_seq, bool)
    picked[
        _sample_sequences(
            n_seq, counts, max_tokens, seed, eligible=np.isin(split_seq, ["train", "test"])
        )
    ] = True
    fires = None
    sampled, sampled_rows = [], []

    def enc(x):
        nonlocal fires
        with torch.no_grad():
            z = sae.encode(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()
        fires = (z > 0).sum(0) if fires is None else fires + (z > 0).sum(0)
        return z

    def transform(x, _rows=[0]):  # noqa: B006  (chunk row cursor)
        z = enc(x)
        r = np.arange(_rows[0], _rows[0] + len(x))
        _rows[0] += len(x)
        keep = picked[seq[r]]
        if keep.any():
            sampled.append(z[keep])
            sampled_rows.append(r[keep])
        return z

    means = pooled_means(store, layer, n_seq, transform=transform, chunk=chunk)
    F = means.shape[1]
    feats = pd.DataFrame({"feature": np.arange(F), "frequency": fires / max(len(seq), 1)})
    if mtok is not None and sampled:
        Z = np.concatenate(sampled)
        rows = np.concatenate(sampled_rows)
        sp = split_seq[seq[rows]]
        for mid in motif_ids(mtok):
            y = mtok[f"{mid}_hit"].to_numpy()[rows]
            for part in ("train", "test"):
                m = sp == part
                aucs = np.full(F, np.nan)
                for lo in range(0, F, 512):
                    aucs[lo : lo + 512] = auroc_matrix(Z[m, lo : lo + 512], y[m])
                feats[f"{mid}_auroc_{part}"] = aucs
    return feats, means


def best_motif_features(feats: pd.DataFrame, motifs) -> pd.DataFrame:
    """Per motif the live feature with the highest training AUROC (ties: lowest index)."""
    rows = []
    for mid in motifs:
        col = f"{mid}_auroc_train"
        if col not in feats:
            continue
        t = feats[(feats.frequency > 0) & feats[col].notna()]
        if t.empty:
            continue
        r = t.loc[t[col].idxmax()]
        rows.append(
            dict(
                motif=mid,
                feature=int(r.feature),
                auroc_train=float(r[col]),
                auroc_test=float(r[f"{mid}_auroc_test"]),
                frequency=float(r.frequency),
            )
        )
    return pd.DataFrame(
        rows, columns=["motif", "feature", "auroc_train", "auroc_test", "frequency"]
    )


def feature_ablation(
    adapter,
    sae,
    layer: int,
    sequences,
    targets: pd.DataFrame,
    freq: np.ndarray,
    *,
    n_null: int = 50,
    batch_size: int = 32,
    seed: int = 0,
    alpha: float = 0.05,
    mask_prob: float | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ablate each target feature (and its frequency-matched null features) at ``layer``.

    The effect at a token is KL(clean || ablated) of the model's output distribution there (nats);
    specificity = mean effect where the feature fires - mean effect elsewhere (genuine tokens only).
    With ``mask_prob``, that fraction of each sequence's tokens is replaced by the mask token
    (seeded per sequence, as the LM-loss evaluation does) and only the masked tokens count: the
    output there is the model's prediction from context, its actual task, rather than the near-copy
    of a visible token. Returns (one row per target: motif, feature, frequency, specificity,
    effect_active, effect_inactive, null_mean, null_sd, null_q95, n_null, p, specific = p < alpha),
    and the null features' specificities.
    """
    import torch
    import torch.nn.functional as Fn
    from tqdm.auto import tqdm

    from saeflow.models.base import Capture, Patch
    from saeflow.sae.ablation import ablate, matched_null_features, null_p

    if targets.empty:
        return pd.DataFrame(columns=ABLATION_COLUMNS), pd.DataFrame(
            columns=["motif", "feature", "specificity"]
        )
    nulls = {}
    for r in targets.itertuples():
        nulls[r.feature] = matched_null_features(
            freq,
            int(r.feature),
            n_null,
            seed=seed + int(r.feature),
            exclude=targets.feature.tolist(),
            fill=True,
        )
    feats = sorted(set(targets.feature.astype(int)) | {int(f) for v in nulls.values() for f in v})
    fi = {f: i for i, f in enumerate(feats)}
    s_act, n_act = np.zeros(len(feats)), np.zeros(len(feats))
    s_in, n_in = np.zeros(len(feats)), np.zeros(len(feats))
    sae = sae.to(adapter.device).eval()
    seqs = list(sequences)
    # the ablated passes of a batch share its clean pass's blocks below the layer
    with adapter.reusing_prefix(layer):
        for sl in tqdm(
            list(_batches(len(seqs), batch_size)), desc=f"ablation layer {layer}", mininterval=5
        ):
            tb = adapter.tokenize(seqs[sl])
            g = ~tb.special
            if mask_prob:
                tb, g = adapter.masked(tb, mask_prob, seed, range(sl.start, sl.stop))
            g = torch.from_numpy(g).to(adapter.device)
            with torch.inference_mode():
                rc = adapter.run(tb, Capture(resid=[layer]))
                logp = Fn.log_softmax(rc.logits.float(), -1)
                x = rc.resid[layer]
                z = sae.encode(x.reshape(-1, x.shape[-1]).to(sae.W_dec.dtype)).reshape(
                    *x.shape[:2], -1
                )
                for f in feats:
                    r = adapter.run(
                        tb, None, Patch(resid={layer: lambda t, f=f: ablate(sae, t, f).to(t.dtype)})
                    )
                    kl = (logp.exp() * (logp - Fn.log_softmax(r.logits.float(), -1))).sum(-1)
                    act = (z[..., f] > 0) & g
                    ina = ~(z[..., f] > 0) & g
                    i = fi[f]
                    s_act[i] += float(kl[act].sum())
                    n_act[i] += int(act.sum())
                    s_in[i] += float(kl[ina].sum())
                    n_in[i] += int(ina.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        e_act = np.where(n_act > 0, s_act / n_act, np.nan)
        e_in = np.where(n_in > 0, s_in / n_in, np.nan)
    spec = e_act - e_in
    rows, null_rows = [], []
    for r in targets.itertuples():
        f = int(r.feature)
        nv = np.array([spec[fi[int(g)]] for g in nulls[f]])
        p, n = null_p(spec[fi[f]], nv)
        fin = nv[np.isfinite(nv)]
        rows.append(
            dict(
                motif=r.motif,
                feature=f,
                frequency=float(freq[f]),
                specificity=spec[fi[f]],
                effect_active=e_act[fi[f]],
                effect_inactive=e_in[fi[f]],
                null_mean=fin.mean() if len(fin) else np.nan,
                null_sd=fin.std(ddof=1) if len(fin) > 1 else np.nan,
                null_q95=np.quantile(fin, 0.95) if len(fin) else np.nan,
                n_null=n,
                null_freq_ratio=float(np.exp(np.abs(np.log(freq[nulls[f]] / freq[f]))).max())
                if len(nulls[f])
                else np.nan,
                p=p,
                specific=bool(np.isfinite(p) and p < alpha),
            )
        )
        null_rows += [
            dict(motif=r.motif, feature=int(g), specificity=spec[fi[int(g)]]) for g in nulls[f]
        ]
    return pd.DataFrame(rows, columns=ABLATION_COLUMNS), pd.DataFrame(null_rows)


ABLATION_COLUMNS = [
    "motif",
    "feature",
    "frequency",
    "specificity",
    "effect_active",
    "effect_inactive",
    "null_mean",
    "null_sd",
    "null_q95",
    "n_null",
    "null_freq_ratio",
    "p",
    "specific",
]

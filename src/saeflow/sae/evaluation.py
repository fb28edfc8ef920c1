"""Evaluate a trained SAE on held-out sequences: reconstruction, sparsity, and masked-LM loss
recovered.

Two families of metrics, both on the held-out split (``split == "test"``, by sequence):

* **Activation metrics** (:func:`activation_metrics`), streamed over the memory-mapped layer one
  chunk at a time: fraction of variance unexplained (FVU = Σ‖x − x̂‖² / Σ‖x − x̄‖²) and explained
  variance (1 − FVU), L0 (mean number of active latents per token), dead latents (never fire on
  held-out tokens), dense latents (fire on more than :data:`DENSE_THRESHOLD` of held-out tokens) and
  each latent's firing frequency. The arithmetic is :func:`saeflow.sae.train.evaluate`, the same
  function that writes ``metrics.json`` at training time, so the two agree by construction (it also
  rejects NaN/inf, naming the file and rows).

* **Masked-LM loss recovered** (:func:`lm_loss_recovered`): the model reads each held-out
  sequence with a seeded, fixed set of positions masked, three times per batch:

  - clean: L_clean, the model as it is;
  - zero ablation: layer L's hidden state replaced by 0, L_zero;
  - SAE: layer L's hidden state replaced by the SAE reconstruction x̂, L_sae;

  and ``loss_recovered = (L_zero − L_sae) / (L_zero − L_clean)`` (1: the SAE loses nothing; 0: as
  bad as deleting the layer). Cross-entropy is averaged over masked tokens only.

Decisions (and why):

* **Masking.** Every sequence gets ``max(1, round(mask_prob · n))`` of its ``n`` genuine
(non-special,
  non-padding) tokens replaced by the mask token: all of them by ``[MASK]``, no 80/10/10 split (the
  random/unchanged 10 % only exist to regularise training; here they would just add noise). Which
  positions is drawn from ``numpy.random.default_rng([seed, i])`` for the i-th sequence, so the mask
  depends only on ``(seed, i, sequence)``: not on the batch size, the device or the batch order.
* **Where the SAE goes.** The replaced tensor is exactly what ``hidden_states[L]`` of the Hugging
  Face model reports, the tensor the activations were extracted from: the adapter's residual site
  for L (``resid_site``; each family's tests check it against ``hidden_states`` bit for bit).
  L = 0 is the input of the first block, 0 < L < N the output of block L, and L = N whatever the
  model reports last: for ESM (``EsmForMaskedLM``, transformers >= 5) the *final layer norm's*
  output (``encoder.emb_layer_norm_after``), right before the LM head. The JSON names the site.
  The passes are the adapter's (``masked_lm_losses``): the zero and SAE passes of a batch reuse
  its clean pass's blocks below L.
* **Which positions.** The SAE was trained on activations of non-special tokens only, so the
  substitution (SAE and zero ablation alike) touches only genuine token positions, masked ones
  included: they are genuine positions of the sequence (their input token is ``[MASK]``, so their
  hidden states lie somewhat outside what the SAE saw), and leaving them clean would let the
  prediction at a masked position bypass the SAE through its own residual stream, overstating the
  loss recovered. ``[CLS]``/``[SEP]``/padding keep their clean hidden state.

torch is imported inside the functions that need it; the report rules take the column order from
:mod:`saeflow.columns`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from saeflow.activations import ActivationStore, split_ranges
from saeflow.utils import SaeflowError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: A latent is "dense" when it fires on more than this fraction of held-out tokens.
DENSE_THRESHOLD = 0.1


# --- activation metrics -------------------------------------------------------------


def _as_ranges(rows_or_ranges) -> np.ndarray:
    """(n, 2) [start, end) row ranges from ranges (returned as is) or from a 1-D array of row
    indices."""
    a = np.asarray(rows_or_ranges, dtype=np.int64)
    if a.ndim == 2:
        return a
    rows = np.unique(a)
    if len(rows) == 0:
        return np.empty((0, 2), dtype=np.int64)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return np.stack([rows[np.r_[0, breaks]], rows[np.r_[breaks - 1, len(rows) - 1]] + 1], axis=1)


def activation_metrics(sae, store: ActivationStore, layer: int, rows, chunk: int = 16384) -> dict:
    """FVU, explained variance, L0, dead/dense fractions and per-latent ``frequency`` on some rows
    of a layer.

    ``rows``: (n, 2) [start, end) row ranges (as :func:`saeflow.activations.split_ranges` returns)
    or a 1-D array of row indices. Streams blocks of at most ``chunk`` consecutive rows of the
    memory map; never the whole layer in RAM. NaN/inf in the rows read raise a :class:`SaeflowError`
    naming the file.
    """
    from saeflow.sae.data import RowSet
    from saeflow.sae.train import evaluate

    rowset = RowSet(_as_ranges(rows))
    if rowset.n == 0:
        raise SaeflowError(f"{store.dir}: no token rows to evaluate on (empty held-out split?)")
    arr = store.layer(layer)
    if sae.d_in != arr.shape[1]:
        raise SaeflowError(
            f"{store.dir}/layer{layer}.npy: width {arr.shape[1]} but the SAE expects "
            f"d_in={sae.d_in}"
        )
    ev = evaluate(sae, arr, rowset, 1.0, block=chunk, path=str(store.dir / f"layer{layer}.npy"))
    freq = ev["frequency"]
    ev["dense_fraction"] = float((freq > DENSE_THRESHOLD).mean())
    ev.update(
        n_latents=int(sae.d_sae),
        n_dead=int((freq == 0).sum()),
        n_dense=int((freq > DENSE_THRESHOLD).sum()),
        dense_threshold=DENSE_THRESHOLD,
    )
    return ev


def frequency_histogram(freq: np.ndarray, n_tokens: int, step: float = 0.1) -> dict:
    """Histogram of log10 firing frequency of the latents that fire at all; dead latents counted
    apart."""
    freq = np.asarray(freq, dtype=np.float64)
    alive = freq[freq > 0]
    lo = min(-1.0, math.floor(math.log10(1.0 / max(1, n_tokens))))
    edges = np.linspace(lo, 0.0, int(round(-lo / step)) + 1)
    counts, _ = np.histogram(np.log10(alive), bins=edges)
    return {
        "log10_edges": edges.round(6).tolist(),
        "counts": counts.tolist(),
        "n_dead": int((freq == 0).sum()),
        "n_latents": int(len(freq)),
        "dense_threshold": DENSE_THRESHOLD,
    }


# --- masked-LM loss with a layer substituted -------------------------------------------


def lm_loss_recovered(
    adapter,
    sae: Callable[[torch.Tensor], torch.Tensor],
    sequences: Sequence[str],
    layer: int,
    mask_prob: float = 0.15,
    seed: int = 0,
    batch_size: int = 16,
    max_length: int | None = None,
    min_gap: float = 0.01,
) -> dict:
    """Masked-LM cross-entropy at masked positions: clean, layer zero-ablated, layer replaced by
    ``sae(x)``.

    ``sae`` is any callable mapping (n, d) float32 activations to (n, d) (an SAE module's
    ``forward``); it is applied at the genuine (non-special) positions of ``hidden_states[layer]``
    only, by the adapter's ``masked_lm_losses`` (its residual site for the layer; the blocks below
    the layer run once per batch). Returns ``loss_clean``, ``loss_zero``, ``loss_sae`` (mean nats
    per masked token), ``loss_recovered``, ``n_masked_tokens``, ``n_sequences`` and the hook
    ``site``.

    ``loss_recovered`` = (L_zero - L_sae) / (L_zero - L_clean) is NaN, with the reason in
    ``loss_note``, when zero-ablating the layer moves the loss by less than ``min_gap`` nats per
    masked token: the ratio of two tiny differences says nothing (a random-weight checkpoint gave
    8.3281 vs 8.3287 nats, and "loss recovered" -3.93 and 1.32 on two layers)."""
    import torch

    sequences = list(sequences)
    if isinstance(sae, torch.nn.Module):
        sae = sae.to(adapter.device).eval()
    sums = adapter.masked_lm_losses(
        sequences,
        layer,
        {"zero": torch.zeros_like, "sae": sae},
        mask_prob=mask_prob,
        seed=seed,
        batch_size=batch_size,
        max_length=max_length,
    )
    n_masked = sums["n_masked"]
    loss = {k: sums[k] / n_masked for k in ("clean", "zero", "sae")}
    denom = loss["zero"] - loss["clean"]
    note = ""
    if not abs(denom) >= min_gap:
        note = (
            f"loss recovered undefined: zero-ablating layer {layer} moves the masked-LM loss by "
            f"{denom:+.4g} nats per masked token (L_clean {loss['clean']:.4f}, L_zero "
            f"{loss['zero']:.4f}), less than min_gap {min_gap:g}; the model's output barely "
            "depends on this layer (random or untrained weights?)"
        )
        log.warning("%s", note)
    recovered = (loss["zero"] - loss["sae"]) / denom if not note else float("nan")
    return {
        "loss_clean": loss["clean"],
        "loss_zero": loss["zero"],
        "loss_sae": loss["sae"],
        "loss_recovered": recovered,
        "n_masked_tokens": n_masked,
        "n_sequences": len(sequences),
        "mask_prob": mask_prob,
        "mask_seed": seed,
        "site": adapter.site_name(adapter.resid_site(layer)),
        "loss_note": note,
        "min_gap": min_gap,
    }


# --- the rule's entry point ------------------------------------------------------------------


def evaluate_sae(
    sae_dir: str | os.PathLike,
    acts_dir: str | os.PathLike,
    sequences_path: str | os.PathLike,
    adapter,
    layer: int,
    mask_prob: float = 0.15,
    seed: int = 0,
    batch_size: int = 16,
    max_sequences: int | None = None,
    cells_path: str | os.PathLike | None = None,
    min_gap: float = 0.01,
) -> tuple[dict, np.ndarray]:
    """All held-out metrics of the SAE in ``sae_dir`` on ``layer``; returns (metrics, per-latent
    frequency).

    ``adapter`` is the model the activations were extracted from, loaded by the caller
    (:func:`saeflow.models.load_model`; the SAE layer knows nothing of model families).
    ``max_sequences`` caps the held-out sequences used for the LM loss (a seeded sample); the
    activation metrics always use every held-out token. With ``cells_path`` (a cell dataset's
    ``cells.h5ad``; ``sequences_path`` is then its cell table) the activation metrics are the same,
    split by cell; the masked-LM loss is not computed for cell models (reported as null with a
    ``loss_note``): Geneformer's masked-gene objective and scGPT's expression regression need
    their own masking and loss, which the single-cell analyses will bring.
    """
    from saeflow.sae import load_sae

    store = ActivationStore(acts_dir)
    seqs = pd.read_parquet(sequences_path)
    for col in ("split",) if cells_path else ("sequence", "split"):
        if col not in seqs.columns:
            raise SaeflowError(f"{sequences_path}: no {col!r} column")
    if len(seqs) != store.manifest.get("n_sequences", len(seqs)):
        raise SaeflowError(
            f"{sequences_path}: {len(seqs)} sequences, but {acts_dir} was extracted from "
            f"{store.manifest['n_sequences']}; re-run extract_activations"
        )
    if not (seqs.split == "test").any():
        raise SaeflowError(f"{sequences_path}: no held-out sequences (split == 'test')")
    _, test_ranges = split_ranges(store.seq_offsets, seqs)
    sae = load_sae(sae_dir)
    act = activation_metrics(sae, store, layer, test_ranges)
    freq = act.pop("frequency")
    act["n_tokens"] = int(act["n_tokens"])

    if adapter.d_model != sae.d_in:
        raise SaeflowError(
            f"{sae_dir}/cfg.json: d_in={sae.d_in}, but the model ({adapter.family}) has width "
            f"{adapter.d_model}"
        )
    if cells_path:
        lm = {
            "loss_clean": None,
            "loss_zero": None,
            "loss_sae": None,
            "loss_recovered": None,
            "n_masked_tokens": 0,
            "n_sequences": int((seqs.split == "test").sum()),
            "loss_note": f"not computed for cell models ({adapter.family})",
        }
        metrics = {
            "layer": int(layer),
            **act,
            **lm,
            "frequency_histogram": frequency_histogram(freq, act["n_tokens"]),
        }
        log.info(
            "layer %d: %s", layer, {k: v for k, v in metrics.items() if k != "frequency_histogram"}
        )
        return metrics, freq
    held_out = seqs.sequence[seqs.split == "test"].tolist()
    if max_sequences and len(held_out) > max_sequences:
        pick = np.sort(
            np.random.default_rng(seed).choice(len(held_out), max_sequences, replace=False)
        )
        held_out = [held_out[j] for j in pick]
    lm = lm_loss_recovered(
        adapter,
        sae,
        held_out,
        layer,
        mask_prob=mask_prob,
        seed=seed,
        batch_size=batch_size,
        min_gap=min_gap,
    )
    metrics = {
        "layer": int(layer),
        **act,
        **lm,
        "frequency_histogram": frequency_histogram(freq, act["n_tokens"]),
    }
    if math.isnan(metrics["loss_recovered"]):
        metrics["loss_recovered"] = None  # JSON has no NaN
    log.info(
        "layer %d: %s", layer, {k: v for k, v in metrics.items() if k != "frequency_histogram"}
    )
    return metrics, freq

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
  Face model reports, the tensor the activations were extracted from: L = 0 is the input of the
  first block, 0 < L < N the output of block L − 1, and L = N whatever the model reports last. For
  ESM (``EsmForMaskedLM``, transformers ≥ 5) ``hidden_states[N]`` is the *final layer norm's* output
  (``encoder.emb_layer_norm_after``; transformers ties the last hidden state to
  ``last_hidden_state``), not the output of the last block, so at L = N the substitution happens on
  the base model's output, after that layer norm and right before the LM head. The site is not
  assumed: :func:`locate_layer` tries the candidates on the first batch and keeps the one whose
  tensor equals ``hidden_states[L]`` bit for bit, or fails with an error that says so.
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

import contextlib
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


def mask_positions(
    special: np.ndarray, mask_prob: float, seed: int, seq_ids: Sequence[int]
) -> np.ndarray:
    """(B, T) bool: ``max(1, round(mask_prob * n))`` of each row's ``n`` non-special positions.

    Row b's positions come from ``default_rng([seed, seq_ids[b]])``: independent of batching.
    """
    if not 0 < mask_prob < 1:
        raise SaeflowError(f"mask_prob must lie in (0, 1), got {mask_prob}")
    out = np.zeros(special.shape, dtype=bool)
    for b, sid in enumerate(seq_ids):
        genuine = np.flatnonzero(~special[b])
        if len(genuine) == 0:
            continue
        k = max(1, int(round(mask_prob * len(genuine))))
        rng = np.random.default_rng([int(seed), int(sid)])
        out[b, rng.choice(genuine, size=k, replace=False)] = True
    return out


def _blocks(model) -> list:
    """The transformer blocks whose outputs are ``hidden_states[1..N]``, in order."""
    import torch

    n = int(model.config.num_hidden_layers)
    spec = (getattr(type(model), "_can_record_outputs", None) or {}).get("hidden_states")
    target = getattr(spec, "target_class", spec)
    if isinstance(target, type):
        found = [m for m in model.modules() if isinstance(m, target)]
        if len(found) == n:
            return found
    for _, mod in model.base_model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return list(mod)
    raise SaeflowError(
        f"{type(model).__name__}: cannot find its {n} transformer blocks (no ModuleList of that "
        "length)"
    )


class _Site:
    """One place in the forward pass: the input of a module
    (``input``) or its output (``output``)."""

    def __init__(self, module, kind: str, label: str):
        self.module, self.kind, self.label = module, kind, label

    @contextlib.contextmanager
    def hook(self, fn: Callable[[torch.Tensor], torch.Tensor | None]):
        """While active, ``fn(h)`` sees this site's (B, T, d) tensor; a tensor it returns replaces
        ``h``."""
        import torch

        def swap(h):
            new = fn(h)
            return h if new is None else new

        if self.kind == "input":

            def pre(mod, args, kwargs):
                if args:
                    return (swap(args[0]), *args[1:]), kwargs
                return args, dict(kwargs, hidden_states=swap(kwargs["hidden_states"]))

            handle = self.module.register_forward_pre_hook(pre, with_kwargs=True)
        else:

            def post(mod, args, out):
                if isinstance(out, torch.Tensor):
                    return swap(out)
                if isinstance(out, tuple):
                    return (swap(out[0]), *out[1:])
                key = next(iter(out.keys()))  # a ModelOutput: last_hidden_state comes first
                out[key] = swap(out[key])
                return out

            handle = self.module.register_forward_hook(post)
        try:
            yield
        finally:
            handle.remove()


def _candidate_sites(model, layer: int) -> list[_Site]:
    n = int(model.config.num_hidden_layers)
    if not 0 <= layer <= n:
        raise SaeflowError(
            f"layer {layer} out of range: {type(model).__name__} has hidden states 0..{n}"
        )
    blocks = _blocks(model)
    if layer == 0:
        return [_Site(blocks[0], "input", "input of block 0 (embeddings)")]
    sites = []
    if layer == n and model.base_model is not model:
        sites.append(
            _Site(
                model.base_model,
                "output",
                f"{type(model.base_model).__name__} output (last_hidden_state)",
            )
        )
    sites.append(_Site(blocks[layer - 1], "output", f"output of block {layer - 1}"))
    return sites


def _forward(model, ids, attention_mask, **kw):
    return model(input_ids=ids, attention_mask=attention_mask, **kw)


def locate_layer(model, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> _Site:
    """The site whose tensor is exactly
    ``hidden_states[layer]``, checked on one real forward
    pass."""
    import torch

    sites = _candidate_sites(model, layer)
    seen: dict[int, torch.Tensor] = {}

    def record(i):
        def f(h):
            # returns None: the forward pass is left unchanged
            seen.setdefault(i, h.detach().clone())

        return f

    with contextlib.ExitStack() as stack:
        for i, s in enumerate(sites):
            stack.enter_context(s.hook(record(i)))
        with torch.inference_mode():
            ref = _forward(
                model, input_ids, attention_mask, output_hidden_states=True
            ).hidden_states[layer]
    for i, s in enumerate(sites):
        if i in seen and seen[i].shape == ref.shape and torch.equal(seen[i], ref):
            log.info("layer %d = %s", layer, s.label)
            return s
    raise SaeflowError(
        f"{type(model).__name__}: none of {[s.label for s in sites]} reproduces "
        f"hidden_states[{layer}]; "
        "the SAE cannot be substituted at the place its activations came from"
    )


def _replace_at(positions: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]):
    """A hook function: rows of ``h`` at ``positions`` (B, T bool) become ``fn(rows)``, the rest
    stay clean."""

    def f(h: torch.Tensor) -> torch.Tensor:
        out = h.clone()
        out[positions] = fn(h[positions].float()).to(h.dtype)
        return out

    return f


def _masked_ce_sum(logits: torch.Tensor, labels: torch.Tensor, masked: torch.Tensor) -> float:
    import torch

    return float(
        torch.nn.functional.cross_entropy(logits[masked].float(), labels[masked], reduction="sum")
    )


def lm_loss_recovered(
    adapter,
    sae: Callable[[torch.Tensor], torch.Tensor],
    sequences: Sequence[str],
    layer: int,
    mask_prob: float = 0.15,
    seed: int = 0,
    batch_size: int = 16,
    max_length: int | None = None,
) -> dict:
    """Masked-LM cross-entropy at masked positions: clean, layer zero-ablated, layer replaced by
    ``sae(x)``.

    ``sae`` is any callable mapping (n, d) float32 activations to (n, d) (an SAE module's
    ``forward``); it is applied at the genuine (non-special) positions of ``hidden_states[layer]``
    only. Returns ``loss_clean``, ``loss_zero``, ``loss_sae`` (mean nats per masked token),
    ``loss_recovered`` (NaN when L_zero == L_clean), ``n_masked_tokens``, ``n_sequences`` and the
    hook ``site``."""
    import torch
    from tqdm.auto import tqdm

    model, dev = adapter.model.eval(), adapter.device
    mask_id = adapter.tokenizer.mask_token_id
    if mask_id is None:
        raise SaeflowError(
            f"{type(model).__name__}: the tokenizer has no mask token; masked-LM loss is undefined"
        )
    if isinstance(sae, torch.nn.Module):
        sae = sae.to(dev).eval()
    sequences = list(sequences)
    if not sequences:
        raise SaeflowError("no sequences to evaluate the masked-LM loss on")
    sums = {"clean": 0.0, "zero": 0.0, "sae": 0.0}
    n_masked = 0
    site = None
    for i in tqdm(
        range(0, len(sequences), batch_size), desc=f"LM loss layer {layer}", mininterval=5
    ):
        tb = adapter.tokenize(sequences[i : i + batch_size], max_length=max_length)
        masked_np = mask_positions(tb.special, mask_prob, seed, range(i, i + len(tb.special)))
        genuine = torch.from_numpy(~tb.special).to(dev)
        masked = torch.from_numpy(masked_np).to(dev)
        labels = tb.input_ids.to(dev)
        ids = labels.masked_fill(masked, mask_id)
        am = tb.attention_mask.to(dev)
        if site is None:
            site = locate_layer(model, layer, ids, am)
        # the hooks run inside it too: nothing is recorded for autograd
        with torch.inference_mode():
            sums["clean"] += _masked_ce_sum(_forward(model, ids, am).logits, labels, masked)
            with site.hook(_replace_at(genuine, torch.zeros_like)):
                sums["zero"] += _masked_ce_sum(_forward(model, ids, am).logits, labels, masked)
            with site.hook(_replace_at(genuine, sae)):
                sums["sae"] += _masked_ce_sum(_forward(model, ids, am).logits, labels, masked)
        n_masked += int(masked_np.sum())
    loss = {k: v / n_masked for k, v in sums.items()}
    denom = loss["zero"] - loss["clean"]
    if denom == 0:
        log.warning(
            "layer %d: L_zero == L_clean (%.6g); loss recovered is undefined", layer, loss["clean"]
        )
    recovered = (loss["zero"] - loss["sae"]) / denom if denom != 0 else float("nan")
    return {
        "loss_clean": loss["clean"],
        "loss_zero": loss["zero"],
        "loss_sae": loss["sae"],
        "loss_recovered": recovered,
        "n_masked_tokens": n_masked,
        "n_sequences": len(sequences),
        "mask_prob": mask_prob,
        "mask_seed": seed,
        "site": site.label,
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
        adapter, sae, held_out, layer, mask_prob=mask_prob, seed=seed, batch_size=batch_size
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

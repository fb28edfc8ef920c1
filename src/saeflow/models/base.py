"""One interface over every model family: tokenise, run once with hooks, patch.

Every family (toy ESM, DNABERT, Nucleotide Transformer v2, DNABERT-2, Geneformer, scGPT) is a
:class:`ModelAdapter`. Callers never touch family internals; they ask for

* ``tokenize(inputs)`` -> :class:`TokenBatch`: ids, attention mask, which tokens are special, and
  where each token came from: a base span ``offsets[b, t] = (start, end)`` for DNA (BPE and k-mer
  tokens included, ``(0, 0)`` for specials), or a gene id ``genes[b, t]`` for cells (``""`` for
  specials);
* ``run(batch, capture=Capture(...), patch=Patch(...))`` -> :class:`RunResult`: one forward pass
  that records, for the requested layers, the residual stream, attention probabilities, per-head
  Q/K/V and MLP activations, while optionally replacing a layer's residual stream or one head's
  output (for activation patching and for splicing in an SAE reconstruction).

Layer numbering (the same everywhere in saeflow): residual layer ``L`` is ``hidden_states[L]`` of
the Hugging Face convention, ``0`` = the embeddings that enter block 1, ``L`` = what block ``L``
writes (``1 <= L <= n_layers``; where a family applies a final norm to its last hidden state, as
ESM does, ``L = n_layers`` is that normed tensor). Attention, Q/K/V, head outputs and MLP
activations of block ``L`` are indexed by the same ``L`` (1-based). Heads are 0-based.

Shapes: residual (B, T, d_model); attention probabilities (B, H, T, T) (query x key, rows sum to 1
over unmasked keys); q, k, v (B, H, T, d_head), taken right after the projections (before any
rotary embedding); head outputs (B, T, H, d_head) = attention-weighted values of each head, the
input of the attention output projection; MLP activations (B, T, d_ff) after the nonlinearity
(for a GLU, after the gate product).

Weights for QK / OV circuits: :meth:`ModelAdapter.head_weights` returns per-head W_Q, W_K, W_V
(d_model x d_head) and W_O (d_head x d_model) so callers can form ``W_Q W_K^T`` and ``W_V W_O``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

#: A replacement for a tensor at a site: a function of the clean tensor, or a tensor of its shape.
Replacement = Union[Callable[[Any], Any], Any]


@dataclass
class TokenBatch:
    input_ids: Any  # torch.LongTensor (B, T)
    attention_mask: Any  # torch.LongTensor (B, T), 1 = real token
    # (B, T, 2) int: base span of each token in its sequence; (0, 0) for specials/cells
    offsets: np.ndarray
    special: np.ndarray  # (B, T) bool: special or padding tokens
    genes: np.ndarray | None = (
        None  # (B, T) object: gene id of each token (cell models), "" for specials
    )
    # family-specific model inputs (e.g. scGPT's binned values)
    extra: dict = field(default_factory=dict)


@dataclass
class Capture:
    """What to record, as lists of layers (see the module docstring for numbering and shapes)."""

    resid: list[int] = field(default_factory=list)
    attn: list[int] = field(default_factory=list)
    qkv: list[int] = field(default_factory=list)
    head_out: list[int] = field(default_factory=list)
    mlp: list[int] = field(default_factory=list)


@dataclass
class Patch:
    """What to replace during the forward pass.

    ``resid[L]``: residual layer L (replacement of the (B, T, d_model) tensor).
    ``heads[(L, h)]``: output of head h of block L (replacement of its (B, T, d_head) slice, before
    the output projection); a function receives the clean slice and returns the new one.
    """

    resid: dict[int, Replacement] = field(default_factory=dict)
    heads: dict[tuple[int, int], Replacement] = field(default_factory=dict)


@dataclass
class RunResult:
    logits: Any  # (B, T, vocab) or None
    resid: dict[int, Any] = field(default_factory=dict)
    attn: dict[int, Any] = field(default_factory=dict)
    q: dict[int, Any] = field(default_factory=dict)
    k: dict[int, Any] = field(default_factory=dict)
    v: dict[int, Any] = field(default_factory=dict)
    head_out: dict[int, Any] = field(default_factory=dict)
    mlp: dict[int, Any] = field(default_factory=dict)


class ModelAdapter:
    """Base class; see the module docstring. Subclasses set ``family`` and ``kind`` ("dna" or
    "cells")."""

    family: str = ""
    kind: str = "dna"

    def __init__(self, model, tokenizer, device=None):
        import torch

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device or torch.device("cpu")
        self.model.to(self.device)

    # --- sizes -------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def n_heads(self) -> int:
        return int(self.model.config.num_attention_heads)

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    # --- the interface -----------------------------------------------------------------
    def tokenize(self, inputs, max_length: int | None = None) -> TokenBatch:
        raise NotImplementedError

    def run(
        self,
        batch: TokenBatch,
        capture: Capture | None = None,
        patch: Patch | None = None,
        logits: bool = True,
    ) -> RunResult:
        raise NotImplementedError

    def head_weights(self, layer: int) -> dict:
        """Per-head weights of block ``layer``: W_Q, W_K, W_V (H, d_model, d_head), W_O (H, d_head,
        d_model)."""
        raise NotImplementedError

    def hidden_states(self, batch: TokenBatch, layers: list[int]) -> dict:
        """Residual layers only: {layer: (B, T, d) tensor} (the extraction rule's call)."""
        return self.run(batch, Capture(resid=list(layers)), logits=False).resid


def mask_positions(
    special: np.ndarray, mask_prob: float, seed: int, seq_ids: Sequence[int]
) -> np.ndarray:
    """(B, T) bool: ``max(1, round(mask_prob * n))`` of each row's ``n`` non-special positions.

    Row b's positions come from ``default_rng([seed, seq_ids[b]])``: independent of batching.
    """
    if not 0 < mask_prob < 1:
        from saeflow.utils import SaeflowError

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


def _replace_at(positions, fn: Callable):
    """A replacement: rows of ``h`` at ``positions`` (B, T bool) become ``fn(rows)`` (float32 in,
    cast back), the rest stay clean."""

    def f(h):
        out = h.clone()
        out[positions] = fn(h[positions].float()).to(h.dtype)
        return out

    return f


def _masked_ce_sum(logits, labels, masked) -> float:
    import torch

    return float(
        torch.nn.functional.cross_entropy(logits[masked].float(), labels[masked], reduction="sum")
    )


# --- hook sites -------------------------------------------------------------------------
@dataclass
class Site:
    """A tensor in the forward pass: ``module``'s input (first positional arg, or ``hidden_states``)
    or output (the output itself, or element ``index`` of a tuple output)."""

    module: Any
    kind: str = "output"  # "input" | "output"
    index: int | None = (
        None  # for tuple outputs: which element (None = the whole tensor / element 0)
    )


@dataclass
class LayerSites:
    """Where block ``L``'s internals live (see the module docstring for shapes).

    ``q``/``k``/``v``: outputs (B, T, H*d_head) right after the projections. ``attn``: the attention
    probabilities (B, H, T, T), or None when the family only reports them through
    ``output_attentions`` (Hugging Face models; then eager attention is switched on for the pass).
    ``head_out``: the concatenated head outputs (B, T, H*d_head), the input of the output
    projection. ``mlp``: the MLP hidden activation after the nonlinearity."""

    q: Site
    k: Site
    v: Site
    head_out: Site
    mlp: Site
    attn: Site | None = None


def _get(out, index):
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple):
        return out[index or 0]
    return out[next(iter(out.keys())) if index is None else list(out.keys())[index]]


def _put(out, index, new):
    import torch

    if isinstance(out, torch.Tensor):
        return new
    if isinstance(out, tuple):
        i = index or 0
        return (*out[:i], new, *out[i + 1 :])
    key = next(iter(out.keys())) if index is None else list(out.keys())[index]
    out[key] = new
    return out


def hook_site(site: Site, fn: Callable):
    """Register ``fn(tensor) -> tensor | None`` at ``site``; a returned tensor replaces the
    original.

    Returns the hook handle (call ``.remove()``).
    """
    if site.kind == "input":

        def pre(mod, args, kwargs):
            if args:
                new = fn(args[0])
                return ((args[0] if new is None else new), *args[1:]), kwargs
            key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
            new = fn(kwargs[key])
            return args, (kwargs if new is None else dict(kwargs, **{key: new}))

        return site.module.register_forward_pre_hook(pre, with_kwargs=True)

    def post(mod, args, out):
        new = fn(_get(out, site.index))
        return None if new is None else _put(out, site.index, new)

    return site.module.register_forward_hook(post)


def _resolve(rep, clean):
    """A replacement (function of the clean tensor, or a tensor) applied to ``clean``."""
    new = rep(clean) if callable(rep) else rep
    if tuple(new.shape) != tuple(clean.shape):
        raise ValueError(
            f"replacement has shape {tuple(new.shape)}, the site's tensor {tuple(clean.shape)}"
        )
    return new.to(dtype=clean.dtype, device=clean.device)


class HookedAdapter(ModelAdapter):
    """A :class:`ModelAdapter` whose ``run`` works through forward hooks at declared sites.

    Subclasses provide :meth:`resid_site` (default: the input of block 1 for L = 0, the output of
    block L otherwise), :meth:`layer_sites` and :meth:`blocks`; ``_forward(batch, **kw)`` calls the
    model (Hugging Face keyword arguments: ``output_attentions``).
    """

    _prefix: _Prefix | None = None  # set inside reusing_prefix

    def blocks(self) -> list:
        raise NotImplementedError

    def layer_sites(self, layer: int) -> LayerSites:
        raise NotImplementedError

    def resid_site(self, layer: int) -> Site:
        blocks = self.blocks()
        if layer == 0:
            return Site(blocks[0], "input")
        return Site(blocks[layer - 1], "output", 0)

    def _forward(self, batch: TokenBatch, **kw):
        return self.model(
            input_ids=batch.input_ids.to(self.device),
            attention_mask=batch.attention_mask.to(self.device),
            **kw,
        )

    @contextlib.contextmanager
    def reusing_prefix(self, layer: int):
        """Within this context, runs on one batch compute the blocks below residual layer
        ``layer`` once.

        The first run on a batch records what each of blocks 1..``layer`` returns; later runs on
        the same batch object get those outputs back without computing them, so a patch at
        ``layer`` costs only the blocks above it (ablating feature after feature, splicing in an
        SAE). The results are the same tensors a full pass computes. Nothing below ``layer`` may
        be captured or patched inside the context (a :class:`SaeflowError` says so)."""
        self._check_layer(layer, 0)
        if self._prefix is not None:
            raise RuntimeError("reusing_prefix contexts do not nest")
        self._prefix = _Prefix(layer)
        try:
            yield
        finally:
            self._prefix = None

    def _prefix_hooks(self, batch: TokenBatch, capture: Capture, patch: Patch) -> list:
        """Inside :meth:`reusing_prefix`: record (new batch) or replay (same batch) the outputs of
        the blocks below the prefix layer; returns what to undo after the pass."""
        pre = self._prefix
        below = [lyr for lyr in set(capture.resid) | set(patch.resid) if lyr < pre.layer]
        inner = set(capture.attn) | set(capture.qkv) | set(capture.head_out) | set(capture.mlp)
        below += [lyr for lyr in inner | {lh[0] for lh in patch.heads} if lyr <= pre.layer]
        if below:
            from saeflow.utils import SaeflowError

            raise SaeflowError(
                f"layers {sorted(set(below))} lie in the reused prefix (blocks 1..{pre.layer})"
            )
        blocks = self.blocks()[: pre.layer]
        if batch is not pre.batch or len(pre.outputs) < len(blocks):  # new, or its pass failed
            pre.batch, pre.outputs = batch, {}

            def keep(i):
                def f(mod, args, out):
                    pre.outputs[i] = _shallow(out)

                return f

            # prepend: what the block itself returned, before any patch hook on its output
            return [b.register_forward_hook(keep(i), prepend=True) for i, b in enumerate(blocks)]
        undo = []
        for i, b in enumerate(blocks):
            b.forward = lambda *a, _out=pre.outputs[i], **k: _shallow(_out)
            undo.append(_Unpatch(b))
        return undo

    def site_name(self, site: Site) -> str:
        """``site`` in words: input/output of the module's dotted name in the model."""
        name = next((n for n, m in self.model.named_modules() if m is site.module), None)
        where = name or type(site.module).__name__
        return f"{site.kind} of {where}" + ("" if site.index is None else f"[{site.index}]")

    def masked(self, batch: TokenBatch, mask_prob: float, seed: int, seq_ids: Sequence[int]):
        """(``batch`` with :func:`mask_positions` replaced by the mask token, those positions as a
        (B, T) bool array); sequence b's positions are seeded by ``(seed, seq_ids[b])``."""
        from dataclasses import replace

        import torch

        from saeflow.utils import SaeflowError

        mask_id = self.tokenizer.mask_token_id
        if mask_id is None:
            raise SaeflowError(
                f"{self.family or type(self.model).__name__}: the tokenizer has no mask token; "
                "masked-LM loss is undefined"
            )
        m = mask_positions(batch.special, mask_prob, seed, seq_ids)
        ids = batch.input_ids.masked_fill(torch.from_numpy(m), mask_id)
        return replace(batch, input_ids=ids), m

    def masked_lm_losses(
        self,
        sequences,
        layer: int,
        replacements: dict[str, Callable],
        *,
        mask_prob: float = 0.15,
        seed: int = 0,
        batch_size: int = 16,
        max_length: int | None = None,
    ) -> dict:
        """Masked-LM cross-entropy summed over masked tokens: ``clean``, and for each name of
        ``replacements`` with residual layer ``layer`` replaced, at the genuine (non-special)
        positions only, by that function of the (n, d) float32 rows. Masks: :func:`mask_positions`,
        every masked token replaced by the mask token, sequence i seeded by ``(seed, i)``. The
        replaced passes of a batch reuse its clean pass's blocks below the layer
        (:meth:`reusing_prefix`). Returns {"clean": nats, name: nats, ..., "n_masked": count}."""
        import torch
        from tqdm.auto import tqdm

        from saeflow.utils import SaeflowError

        sequences = list(sequences)
        if not sequences:
            raise SaeflowError("no sequences to evaluate the masked-LM loss on")
        sums = dict.fromkeys(["clean", *replacements], 0.0)
        n_masked = 0
        with self.reusing_prefix(layer):
            for i in tqdm(
                range(0, len(sequences), batch_size), desc=f"LM loss layer {layer}", mininterval=5
            ):
                tb = self.tokenize(sequences[i : i + batch_size], max_length=max_length)
                labels = tb.input_ids.to(self.device)
                genuine = torch.from_numpy(~tb.special).to(self.device)
                tb, masked_np = self.masked(tb, mask_prob, seed, range(i, i + len(tb.special)))
                masked = torch.from_numpy(masked_np).to(self.device)
                sums["clean"] += _masked_ce_sum(self.run(tb).logits, labels, masked)
                for name, fn in replacements.items():
                    out = self.run(tb, patch=Patch(resid={layer: _replace_at(genuine, fn)}))
                    sums[name] += _masked_ce_sum(out.logits, labels, masked)
                n_masked += int(masked_np.sum())
        return {**sums, "n_masked": n_masked}

    def _check_layer(self, layer: int, lo: int = 0) -> None:
        from saeflow.utils import SaeflowError

        if not lo <= layer <= self.n_layers:
            raise SaeflowError(
                f"layer {layer} out of range: {self.family or type(self.model).__name__} "
                f"has layers {lo}..{self.n_layers}"
            )

    def run(
        self,
        batch: TokenBatch,
        capture: Capture | None = None,
        patch: Patch | None = None,
        logits: bool = True,
    ) -> RunResult:
        import torch

        capture, patch = capture or Capture(), patch or Patch()
        res = RunResult(logits=None)
        handles = []
        H, dh = self.n_heads, self.d_head

        def record(store, layer, reshape=None):
            def f(t):
                store[layer] = t.detach() if reshape is None else reshape(t.detach())

            return f

        def heads_view(t):  # (B, T, H*dh) -> (B, H, T, dh)
            return t.reshape(*t.shape[:-1], H, dh).transpose(-3, -2)

        want_attn_output = False
        # Residual captures alone, no logits: the forward stops once the highest captured layer
        # is recorded (the blocks above it and the LM head would only be thrown away).
        only_resid = not (
            logits
            or patch.resid
            or patch.heads
            or capture.attn
            or capture.qkv
            or capture.head_out
            or capture.mlp
            or self._prefix is not None
        )
        stop_at = max(capture.resid) if only_resid and capture.resid else None
        try:
            if self._prefix is not None:
                handles += self._prefix_hooks(batch, capture, patch)
            for layer in sorted(set(capture.resid) | set(patch.resid)):
                self._check_layer(layer, 0)
                rep, rec = patch.resid.get(layer), layer in capture.resid

                def f(t, rep=rep, rec=rec, layer=layer):
                    new = None if rep is None else _resolve(rep, t)
                    if rec:
                        res.resid[layer] = (t if new is None else new).detach()
                    if layer == stop_at:
                        raise _Done
                    return new

                handles.append(hook_site(self.resid_site(layer), f))
            inner = (
                set(capture.attn)
                | set(capture.qkv)
                | set(capture.head_out)
                | set(capture.mlp)
                | {lh[0] for lh in patch.heads}
            )
            for layer in sorted(inner):
                self._check_layer(layer, 1)
                s = self.layer_sites(layer)
                if layer in capture.qkv:
                    handles += [
                        hook_site(s.q, record(res.q, layer, heads_view)),
                        hook_site(s.k, record(res.k, layer, heads_view)),
                        hook_site(s.v, record(res.v, layer, heads_view)),
                    ]
                if layer in capture.mlp:
                    handles.append(hook_site(s.mlp, record(res.mlp, layer)))
                if layer in capture.attn:
                    if s.attn is None:
                        want_attn_output = True
                    else:
                        handles.append(hook_site(s.attn, record(res.attn, layer)))
                reps = {h: r for (lyr, h), r in patch.heads.items() if lyr == layer}
                for h in reps:
                    if not 0 <= h < H:
                        from saeflow.utils import SaeflowError

                        raise SaeflowError(
                            f"head {h} out of range: block {layer} has heads 0..{H - 1}"
                        )
                if reps or layer in capture.head_out:

                    def g(t, reps=reps, layer=layer):
                        new = None
                        if reps:
                            new = t.clone().reshape(*t.shape[:-1], H, dh)
                            for h, r in reps.items():
                                new[..., h, :] = _resolve(r, new[..., h, :])
                            new = new.reshape(t.shape)
                        if layer in capture.head_out:
                            res.head_out[layer] = (
                                (t if new is None else new).detach().reshape(*t.shape[:-1], H, dh)
                            )
                        return new

                    handles.append(hook_site(s.head_out, g))
            with contextlib.ExitStack() as stack:
                kw = {}
                if want_attn_output:
                    stack.enter_context(_eager_attention(self.model))
                    kw["output_attentions"] = True
                stack.enter_context(torch.inference_mode())
                try:
                    out = self._forward(batch, **kw)
                except _Done:
                    out = None
            if want_attn_output:
                for layer in capture.attn:
                    if layer not in res.attn:
                        res.attn[layer] = out.attentions[layer - 1].detach()
            if logits:
                res.logits = getattr(out, "logits", None)
        finally:
            for h in handles:
                h.remove()
        return res


class _Done(Exception):
    """Raised by the hook of the last residual layer a capture-only pass needs (see
    :meth:`HookedAdapter.run`): the rest of the forward is not computed."""


@dataclass
class _Prefix:
    """The state of :meth:`HookedAdapter.reusing_prefix`: the layer, the batch last run and what
    each block below the layer returned on it."""

    layer: int
    batch: Any = None
    outputs: dict = field(default_factory=dict)


class _Unpatch:
    """Undoes a replayed block (its instance ``forward``); has ``remove`` like a hook handle."""

    def __init__(self, module):
        self.module = module

    def remove(self):
        del self.module.forward


def _shallow(out):
    """A block's output as a hook may receive it: tensors and tuples as they are, a mapping (a
    ModelOutput, which a hook may change in place) copied."""
    import copy

    return out if isinstance(out, tuple) or hasattr(out, "dim") else copy.copy(out)


def _eager_attention(model):
    """Context: Hugging Face eager attention (the only kind that returns probabilities) for one
    pass."""

    @contextlib.contextmanager
    def ctx():
        configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}
        old = {k: getattr(c, "_attn_implementation", None) for k, c in configs.items()}
        try:
            for c in configs.values():
                try:
                    c._attn_implementation = "eager"
                except Exception:
                    pass
            yield
        finally:
            for k, c in configs.items():
                try:
                    c._attn_implementation = old[k]
                except Exception:
                    pass

    return ctx()


@dataclass
class CellMatrix:
    """Cells for a single-cell model: raw counts (cells x genes) and the genes' identifiers.

    ``X`` is a scipy.sparse CSR matrix (or a dense array) of raw counts; ``gene_ids`` are Ensembl
    ids (Geneformer's vocabulary), ``gene_symbols`` HGNC symbols (scGPT's); either may be None
    when the data lack it (the adapter that needs it says so). ``names`` are the cell ids.
    Slicing (``cells[i:j]``) returns the rows as a new :class:`CellMatrix`.
    """

    X: Any
    gene_ids: np.ndarray | None
    gene_symbols: np.ndarray | None
    names: np.ndarray

    def __len__(self) -> int:
        return self.X.shape[0]

    def __getitem__(self, rows) -> "CellMatrix":
        return CellMatrix(
            self.X[rows], self.gene_ids, self.gene_symbols, np.asarray(self.names)[rows]
        )

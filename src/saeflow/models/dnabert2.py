"""DNABERT-2 (``zhihan1996/DNABERT-2-117M``) as saeflow's own PyTorch module, no remote code.

Why: the hub model ships ``bert_layers.py`` (MosaicBERT, adapted by the DNABERT-2 authors) behind
``trust_remote_code``; it pulls in a Triton flash-attention kernel, is pinned to old transformers
releases and breaks often. We read the same checkpoint files (``config.json``, ``model.safetensors``
or ``pytorch_model.bin``, ``tokenizer.json``) into the plain implementation below, which is also
easy to hook: q, k, v, the attention probabilities, the concatenated head outputs and the GLU
activation are separate (parameter-free) modules that :class:`~saeflow.models.base.HookedAdapter`
can capture and patch.

Where each piece follows the published code (``bert_layers.py`` of the hub repository, read from
copies of it in public repositories: the MosaicBERT file of mosaicml/examples as modified for
DNABERT-2):

* **Embeddings** (``BertEmbeddings``): word + token-type embeddings, *no* position embeddings
  (ALiBi), then ``LayerNorm`` (``config.layer_norm_eps``) and dropout. ``padding_idx`` is
  ``config.pad_token_id`` (it only matters for training). Token types default to 0, as the
  published ``BertModel`` passes zeros.
* **Self-attention** (``BertUnpadSelfAttention``): one fused ``Wqkv = Linear(d, 3d)`` (with bias);
  its output is laid out ``(t h d)`` with ``t`` = q, k, v (the published ``rearrange``), i.e. the
  first ``d`` features are q, the next k, the last v, each head-major. Scores are
  ``q k^T / sqrt(d_head) + bias``, softmax over keys, attention dropout, times v.
* **ALiBi** (``BertEncoder.rebuild_alibi_tensor``): ``bias[h, i, j] = -slope_h * |i - j|``
  (symmetric, the non-causal variant), slopes from :func:`alibi_slopes`: for a power-of-2 head
  count ``n`` the geometric sequence starting at ``2 ** (-2 ** -(log2 n - 3))`` with that ratio;
  otherwise the slopes of the largest power of 2 below ``n`` followed by every other slope of
  twice that power (as the published recursion does). The published encoder pre-builds the
  tensor at ``alibi_starting_size`` and rebuilds it larger on demand; the values for a given
  length do not depend on that, so we compute it for the batch's length each pass.
* **Attention output** (``BertSelfOutput``): ``dense``, dropout, ``LayerNorm(x + residual)``
  (post-LN).
* **MLP** (``BertGatedLinearUnitMLP``): ``gated_layers = Linear(d, 2 * d_ff, bias=False)``; the
  *first* ``d_ff`` features go through exact GELU (``nn.GELU(approximate='none')``) and multiply
  the *second* ``d_ff``; dropout; ``wo = Linear(d_ff, d)``; ``layernorm(x + residual)`` (post-LN).
* **Block** (``BertLayer``): attention then MLP; there is no final norm after the last block.
* **MLM head** (``BertOnlyMLMHead`` / ``BertLMPredictionHead``): ``cls.predictions.transform``
  (``dense``, ``ACT2FN[config.hidden_act]``, ``LayerNorm`` with eps fixed at 1e-12 as published),
  then ``cls.predictions.decoder = Linear(d, vocab)`` whose weight *is* the word-embedding matrix
  (tied) and which has its own bias (``cls.predictions.decoder.bias``; unlike Hugging Face BERT
  there is no separate ``cls.predictions.bias``). ``BertForMaskedLM`` builds ``BertModel`` without
  the pooler, so the checkpoint has no ``bert.pooler.*`` (a published load log of
  ``AutoModel`` on the checkpoint lists ``bert.pooler.dense.*`` as newly initialised and exactly
  the six ``cls.predictions.*`` tensors as unused).

State-dict names are the published ones, so the real checkpoint loads with ``strict=True``::

    bert.embeddings.{word_embeddings,token_type_embeddings}.weight,
    bert.embeddings.LayerNorm.{weight,bias}
    bert.encoder.layer.N.attention.self.Wqkv.{weight,bias}
    bert.encoder.layer.N.attention.output.dense.{weight,bias},
    ...attention.output.LayerNorm.{weight,bias}
    bert.encoder.layer.N.mlp.gated_layers.weight, ...mlp.wo.{weight,bias},
    ...mlp.layernorm.{weight,bias}
    cls.predictions.transform.dense.{weight,bias}, cls.predictions.transform.LayerNorm.{weight,bias}
    cls.predictions.decoder.{weight,bias}

Padding: the published model *unpads* (runs the linear layers on real tokens only) and pads
again for attention, with an additive ``-10000`` on padded keys; in float32 ``exp(-10000)`` is
exactly 0, so padded keys get probability 0. Here everything runs padded and padded keys are
masked with ``masked_fill`` (probability exactly 0), which gives the same numbers for real
tokens; values at padded positions are meaningless (the published model returns zeros there).
The published model on a GPU with Triton uses a flash-attention kernel in fp16; this module is
the mathematically equal PyTorch path the published code falls back to without Triton.

What is *not* published and added here: the hook points ``attention.self.{q,k,v}`` (outputs
(B, T, d) right after the split of ``Wqkv``), ``attention.self.probs`` (B, H, T, T),
``attention.self.head_out`` (B, T, d: concatenated heads, the input of ``attention.output.dense``)
and ``mlp.glu`` (B, T, d_ff: after the gate product), all ``nn.Identity`` (no parameters), and
Hugging-Face-style ``output_hidden_states`` (embeddings, then every block's output).

Tokenizer: ``tokenizer.json`` is a ``tokenizers`` BPE model; the authors' training script (posted
in MAGICS-LAB/DNABERT_2 issue #74) uses ``BPE(unk_token="[UNK]")``, a ``Whitespace``
pre-tokenizer, specials ``[UNK] [CLS] [SEP] [PAD] [MASK]`` and ``[CLS] $A [SEP]`` post-processing.
We wrap it in a ``PreTrainedTokenizerFast`` and take token -> base offsets from it, but verify each
one (``seq[start:end]`` must equal the token's string) and re-derive offsets by walking the
sequence where they do not, so the offsets are right whatever normaliser or pre-tokeniser the file
declares."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from saeflow.models.base import HookedAdapter, LayerSites, Site, TokenBatch
from saeflow.models.hf import read_config
from saeflow.models.registry import Family, register
from saeflow.utils import SaeflowError

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TIED_DECODER = "cls.predictions.decoder.weight"
WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"


# --- configuration -------------------------------------------------------------------------------
@dataclass
class Dnabert2Config:
    """The fields of DNABERT-2's ``config.json`` the architecture uses; the rest is kept in
    ``extra``.

    Defaults are the published ``BertConfig`` defaults where DNABERT-2's file might omit a key
    (``pad_token_id`` is absent from some copies of it; 0 is the ``BertConfig`` default).
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.0
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    alibi_starting_size: int = 512
    max_position_embeddings: int = 512
    pad_token_id: int = 0
    extra: dict = field(default_factory=dict)

    REQUIRED = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
    )

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "Dnabert2Config":
        missing = [k for k in cls.REQUIRED if k not in d]
        if missing:
            raise SaeflowError(
                f"{source}: missing {', '.join(missing)}; not a DNABERT-2 config.json"
            )
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kw = {k: d[k] for k in known if k in d and d[k] is not None}
        cfg = cls(**kw, extra={k: v for k, v in d.items() if k not in known})
        for k in cls.REQUIRED:
            v = getattr(cfg, k)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise SaeflowError(f"{source}: {k} must be a positive integer, got {v!r}")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise SaeflowError(
                f"{source}: hidden_size {cfg.hidden_size} is not a multiple of "
                f"num_attention_heads {cfg.num_attention_heads}"
            )
        return cfg

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Dnabert2Config":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise SaeflowError(f"{path}: cannot read config.json ({e})") from e
        if not isinstance(d, dict):
            raise SaeflowError(f"{path}: config.json is not a JSON object")
        return cls.from_dict(d, str(path))


# --- ALiBi ---------------------------------------------------------------------------------------
def alibi_slopes(n_heads: int) -> list[float]:
    """Per-head ALiBi slopes as the published ``_get_alibi_head_slopes`` computes them.

    Power of 2: ``start * start**i`` with ``start = 2 ** (-2 ** -(log2(n) - 3))`` (same float
    arithmetic as published). Otherwise: the slopes of ``p = 2 ** floor(log2 n)`` heads, then the
    even-indexed slopes of ``2p`` heads, the first ``n - p`` of them.
    """
    if n_heads <= 0:
        raise ValueError(f"n_heads must be positive, got {n_heads}")

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_2(n_heads)
    p = 2 ** math.floor(math.log2(n_heads))
    return power_of_2(p) + alibi_slopes(2 * p)[0::2][: n_heads - p]


def alibi_bias(n_heads: int, length: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The (1, H, T, T) additive ALiBi bias ``-slope_h * |i - j|`` (query i, key j)."""
    pos = torch.arange(length, device=device)
    dist = (pos[None, :] - pos[:, None]).abs()
    slopes = torch.tensor(alibi_slopes(n_heads), dtype=torch.float32, device=device)
    return (slopes[:, None, None] * -dist).unsqueeze(0).to(dtype)


# --- modules (names = published state-dict names) -----------------------------------------------
class Dnabert2Embeddings(nn.Module):
    def __init__(self, config: Dnabert2Config):
        super().__init__()
        pad = config.pad_token_id if 0 <= config.pad_token_id < config.vocab_size else None
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=pad)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class Dnabert2SelfAttention(nn.Module):
    """Fused-QKV self-attention with hook points after the split, on the probabilities and on the
    heads."""

    def __init__(self, config: Dnabert2Config):
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.Wqkv = nn.Linear(self.all_head_size, 3 * config.hidden_size)
        self.q, self.k, self.v = nn.Identity(), nn.Identity(), nn.Identity()  # (B, T, d) each
        self.probs = nn.Identity()  # (B, H, T, T)
        self.head_out = nn.Identity()  # (B, T, H * d_head): concatenated heads
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        bias: torch.Tensor,
        key_mask: torch.Tensor,
        attn_store: list | None = None,
    ) -> torch.Tensor:
        B, T, _ = hidden_states.shape
        H, dh = self.num_attention_heads, self.attention_head_size
        q, k, v = self.Wqkv(hidden_states).split(self.all_head_size, dim=-1)  # (t h d) layout
        q, k, v = self.q(q), self.k(k), self.v(v)

        def heads(t):  # (B, T, H*dh) -> (B, H, T, dh)
            return t.reshape(B, T, H, dh).transpose(1, 2)

        scores = torch.matmul(heads(q), heads(k).transpose(-1, -2)) / math.sqrt(dh) + bias
        scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
        probs = self.probs(torch.softmax(scores, dim=-1))
        if attn_store is not None:
            attn_store.append(probs)
        ctx = torch.matmul(self.dropout(probs), heads(v))  # (B, H, T, dh)
        return self.head_out(ctx.transpose(1, 2).reshape(B, T, H * dh))


class Dnabert2SelfOutput(nn.Module):
    def __init__(self, config: Dnabert2Config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class Dnabert2Attention(nn.Module):
    def __init__(self, config: Dnabert2Config):
        super().__init__()
        self.self = Dnabert2SelfAttention(config)
        self.output = Dnabert2SelfOutput(config)

    def forward(self, hidden_states, bias, key_mask, attn_store=None):
        return self.output(self.self(hidden_states, bias, key_mask, attn_store), hidden_states)


class Dnabert2GatedMLP(nn.Module):
    """GLU feed-forward: GELU(first half) * second half, ``wo``, post-LN with the residual."""

    def __init__(self, config: Dnabert2Config):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.act = nn.GELU(approximate="none")
        self.glu = nn.Identity()  # (B, T, d_ff): the activation after the gate product
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        h = self.gated_layers(hidden_states)
        gated, non_gated = h[..., : self.intermediate_size], h[..., self.intermediate_size :]
        h = self.glu(self.act(gated) * non_gated)
        return self.layernorm(self.wo(self.dropout(h)) + hidden_states)


class Dnabert2Layer(nn.Module):
    """One block; ``forward(hidden_states, ...)`` takes the
    residual stream first (hook convention)."""

    def __init__(self, config: Dnabert2Config):
        super().__init__()
        self.attention = Dnabert2Attention(config)
        self.mlp = Dnabert2GatedMLP(config)

    def forward(self, hidden_states, bias, key_mask, attn_store=None):
        return self.mlp(self.attention(hidden_states, bias, key_mask, attn_store))


class Dnabert2Encoder(nn.Module):
    def __init__(self, config: Dnabert2Config):
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.layer = nn.ModuleList([Dnabert2Layer(config) for _ in range(config.num_hidden_layers)])

    def forward(
        self, hidden_states, attention_mask, output_hidden_states=False, output_attentions=False
    ):
        T = hidden_states.shape[1]
        bias = alibi_bias(self.num_attention_heads, T, hidden_states.device, hidden_states.dtype)
        key_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        all_hidden = [hidden_states] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for block in self.layer:
            hidden_states = block(hidden_states, bias, key_mask, attentions)
            if all_hidden is not None:
                all_hidden.append(hidden_states)
        return (
            hidden_states,
            (tuple(all_hidden) if all_hidden is not None else None),
            (tuple(attentions) if attentions is not None else None),
        )


class Dnabert2Model(nn.Module):
    """``bert``: embeddings + encoder (no pooler, as in the published ``BertForMaskedLM``).

    Returns a tuple ``(last_hidden_state, hidden_states or None, attentions or None)``.
    """

    def __init__(self, config: Dnabert2Config):
        super().__init__()
        self.config = config
        self.embeddings = Dnabert2Embeddings(config)
        self.encoder = Dnabert2Encoder(config)

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        output_hidden_states=False,
        output_attentions=False,
    ):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        return self.encoder(x, attention_mask, output_hidden_states, output_attentions)


class Dnabert2PredictionHeadTransform(nn.Module):
    def __init__(self, config: Dnabert2Config):
        super().__init__()
        from transformers.activations import ACT2FN

        if config.hidden_act not in ACT2FN:
            raise SaeflowError(f"config.json: unknown hidden_act {config.hidden_act!r}")
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=1e-12)  # fixed in the published code

    def forward(self, x):
        return self.LayerNorm(self.transform_act_fn(self.dense(x)))


class Dnabert2LMPredictionHead(nn.Module):
    def __init__(self, config: Dnabert2Config, embedding_weight: nn.Parameter):
        super().__init__()
        self.transform = Dnabert2PredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.decoder.weight = embedding_weight  # tied to the word embeddings

    def forward(self, x):
        return self.decoder(self.transform(x))


class Dnabert2OnlyMLMHead(nn.Module):
    def __init__(self, config: Dnabert2Config, embedding_weight: nn.Parameter):
        super().__init__()
        self.predictions = Dnabert2LMPredictionHead(config, embedding_weight)

    def forward(self, x):
        return self.predictions(x)


@dataclass
class Dnabert2Output:
    """What the masked LM returns (attribute access like a Hugging Face ``MaskedLMOutput``)."""

    logits: Any  # (B, T, vocab)
    last_hidden_state: Any = None  # (B, T, d)
    hidden_states: Any = None  # tuple of n_layers + 1 tensors (B, T, d) when requested
    attentions: Any = None  # tuple of n_layers tensors (B, H, T, T) when requested


class Dnabert2ForMaskedLM(nn.Module):
    """DNABERT-2 masked LM: ``bert`` (embeddings + encoder) and ``cls`` (MLM head)."""

    def __init__(self, config: Dnabert2Config):
        super().__init__()
        self.config = config
        self.bert = Dnabert2Model(config)
        self.cls = Dnabert2OnlyMLMHead(config, self.bert.embeddings.word_embeddings.weight)

    @property
    def base_model(self) -> Dnabert2Model:
        return self.bert

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        output_hidden_states=False,
        output_attentions=False,
        return_dict=None,
    ) -> Dnabert2Output:
        if input_ids.dim() != 2:
            raise SaeflowError(
                f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}"
            )
        if input_ids.numel() and (
            int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size
        ):
            raise SaeflowError(
                f"token ids must lie in 0..{self.config.vocab_size - 1} (vocab_size), got "
                f"{int(input_ids.min())}..{int(input_ids.max())}"
            )
        last, hidden, attentions = self.bert(
            input_ids, attention_mask, token_type_ids, output_hidden_states, output_attentions
        )
        return Dnabert2Output(
            logits=self.cls(last),
            last_hidden_state=last,
            hidden_states=hidden,
            attentions=attentions,
        )


# --- loading -------------------------------------------------------------------------------------
def _read_weights(path: Path) -> dict:
    """The state dict in ``path`` (safetensors or a torch pickle of tensors), on the CPU."""
    try:
        if path.name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, LFS pointer, pickle with non-tensor objects
        raise SaeflowError(f"{path}: cannot read the weights ({type(e).__name__}: {e})") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise SaeflowError(f"{path}: not a state dict of tensors")
    return dict(sd)


def read_checkpoint(model_dir: str | os.PathLike) -> tuple[dict, Path]:
    """The weights of ``model_dir``: a single file (``model.safetensors`` first) or an indexed set
    of shards."""
    d = Path(model_dir)
    for name in WEIGHT_FILES:
        if (d / name).is_file():
            return _read_weights(d / name), d / name
    for name in INDEX_FILES:
        if (d / name).is_file():
            try:
                shards = sorted(set(json.loads((d / name).read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as e:
                raise SaeflowError(f"{d / name}: unreadable weight index ({e})") from e
            sd: dict = {}
            for s in shards:
                if not (d / s).is_file():
                    raise SaeflowError(f"{d / name} names shard {s}, which is missing")
                sd.update(_read_weights(d / s))
            return sd, d / name
    present = sorted(p.name for p in d.iterdir()) if d.is_dir() else []
    raise SaeflowError(
        f"{d}: no weights ({' or '.join(WEIGHT_FILES)}); the directory holds {present}"
    )


def load_checkpoint(
    model: Dnabert2ForMaskedLM, state_dict: dict, source: str = "checkpoint"
) -> None:
    """Load a published-layout state dict with ``strict=True``, after explaining any mismatch.

    ``cls.predictions.decoder.weight`` is tied to the word embeddings: when the file omits it (a
    de-duplicated save) the embeddings fill it; when the two differ the embeddings win, as the
    published model's weight tying does after loading. ``bert.pooler.*`` (from a ``BertModel``
    or classifier save) is unused by the masked LM and dropped.
    """
    sd = dict(state_dict)
    dropped = sorted(k for k in sd if k.startswith("bert.pooler."))
    for k in dropped:
        del sd[k]
    if dropped:
        log.info("%s: ignoring %s (the masked LM has no pooler)", source, dropped)
    if WORD_EMBEDDINGS in sd:
        if TIED_DECODER in sd and not torch.equal(sd[TIED_DECODER], sd[WORD_EMBEDDINGS]):
            log.warning(
                "%s: %s differs from %s; using the word embeddings (the weights are tied)",
                source,
                TIED_DECODER,
                WORD_EMBEDDINGS,
            )
        sd[TIED_DECODER] = sd[WORD_EMBEDDINGS]
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        msg = [f"{source}: the state dict does not match DNABERT-2's layout"]
        if missing:
            msg.append(f"missing key(s): {missing[:12]}{' ...' if len(missing) > 12 else ''}")
        if unexpected:
            msg.append(
                f"unexpected key(s): {unexpected[:12]}{' ...' if len(unexpected) > 12 else ''}"
            )
        if any(".attention.self.query." in k for k in unexpected):
            msg.append(
                "this looks like a standard Hugging Face BERT (separate query/key/value), not "
                "DNABERT-2 / MosaicBERT (fused Wqkv)"
            )
        elif missing and all(k.startswith("cls.") for k in missing):
            msg.append("the file has no masked-LM head (an encoder-only save?)")
        raise SaeflowError("; ".join(msg))
    bad = [
        f"{k}: file {tuple(sd[k].shape)}, config {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(sd[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise SaeflowError(f"{source}: tensor shapes do not match config.json: {bad[:6]}")
    model.load_state_dict(sd, strict=True)


def load_dnabert2_tokenizer(path: str | os.PathLike, vocab_size: int | None = None):
    """``tokenizer.json`` as a ``PreTrainedTokenizerFast`` with DNABERT-2's special tokens."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as e:
        raise SaeflowError(f"{path}: not a readable tokenizers JSON file ({e})") from e
    vocab = backend.get_vocab(with_added_tokens=True)
    names = {
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "mask_token": "[MASK]",
    }
    specials = {k: t for k, t in names.items() if t in vocab}
    if "pad_token" not in specials:
        raise SaeflowError(f"{path}: no [PAD] token; batches of different lengths cannot be padded")
    if vocab_size is not None and max(vocab.values()) >= vocab_size:
        raise SaeflowError(
            f"{path}: token ids go up to {max(vocab.values())}, but config.json has "
            f"vocab_size {vocab_size}; tokenizer and weights do not belong together"
        )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **specials)
    probe = tok("ACGT")["input_ids"]
    if "cls_token" in specials and (not probe or probe[0] != tok.cls_token_id):
        log.warning(
            "%s: the tokenizer adds no [CLS]; DNABERT-2 was trained on [CLS] ... [SEP]", path
        )
    return tok


class Dnabert2Adapter(HookedAdapter):
    """DNABERT-2 behind saeflow's adapter interface (see :mod:`saeflow.models.base`).

    Block ``L`` is ``bert.encoder.layer[L-1]``; residual layer ``L`` is its output (post-LN, no
    final norm), ``0`` the embeddings. Sites: ``attention.self.{q,k,v,probs,head_out}`` and
    ``mlp.glu``."""

    family = "dnabert2"
    kind = "dna"

    def blocks(self) -> list:
        return list(self.model.bert.encoder.layer)

    def layer_sites(self, layer: int) -> LayerSites:
        block = self.blocks()[layer - 1]
        att = block.attention.self
        return LayerSites(
            q=Site(att.q),
            k=Site(att.k),
            v=Site(att.v),
            head_out=Site(att.head_out),
            mlp=Site(block.mlp.glu),
            attn=Site(att.probs),
        )

    def head_weights(self, layer: int) -> dict:
        """W_Q, W_K, W_V (H, d, d_head) split from ``Wqkv`` (q, k, v blocks, head-major), W_O (H,
        d_head, d).

        Biases are not included (``Wqkv.bias`` and ``attention.output.dense.bias``), as for the
        other adapters."""
        self._check_layer(layer, 1)
        block = self.blocks()[layer - 1]
        H, dh, d = self.n_heads, self.d_head, self.d_model
        with torch.no_grad():
            w = block.attention.self.Wqkv.weight.detach()  # (3d, d): rows q | k | v
            out = {
                name: w[i * d : (i + 1) * d].T.reshape(d, H, dh).permute(1, 0, 2).clone()
                for i, name in enumerate(("W_Q", "W_K", "W_V"))
            }
            out["W_O"] = block.attention.output.dense.weight.detach().T.reshape(H, dh, d).clone()
        return out

    # --- tokenisation ------------------------------------------------------------------------
    def _affixes(self) -> tuple[str, str]:
        model = self.tokenizer.backend_tokenizer.model
        return (
            getattr(model, "continuing_subword_prefix", None) or "",
            getattr(model, "end_of_word_suffix", None) or "",
        )

    def tokenize(self, sequences, max_length: int | None = None) -> TokenBatch:
        if isinstance(sequences, str):
            sequences = [sequences]
        seqs = [str(s).upper() for s in sequences]
        if not seqs:
            raise SaeflowError("no sequences to tokenize")
        enc = self.tokenizer(
            seqs,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            padding=True,
            truncation=max_length is not None,
            max_length=max_length,
            return_tensors="pt",
        )
        ids, am = enc["input_ids"], enc["attention_mask"]
        special = enc["special_tokens_mask"].numpy().astype(bool) | (am.numpy() == 0)
        offsets = enc["offset_mapping"].numpy().astype(np.int64)
        offsets[special] = 0
        self._fix_offsets(seqs, ids.numpy(), offsets, special)
        return TokenBatch(ids, am, offsets, special)

    def _fix_offsets(
        self, seqs: list[str], ids: np.ndarray, offsets: np.ndarray, special: np.ndarray
    ) -> None:
        """Make ``seq[start:end]`` equal each BPE token's string, in place.

        The tokenizer's offsets are kept when they check out (the span holds the token and
        follows the previous token, with at most whitespace between); otherwise the token is
        matched where the previous one ended (tokens of one word are contiguous). ``[UNK]``
        (a base outside the vocabulary) keeps the tokenizer's span. A token that matches neither
        way is an error rather than a silently wrong span.
        """
        prefix, suffix = self._affixes()
        unk = self.tokenizer.unk_token_id
        for b, seq in enumerate(seqs):
            cursor = 0
            toks = self.tokenizer.convert_ids_to_tokens(ids[b].tolist())
            for t in np.flatnonzero(~special[b]):
                s, e = (int(x) for x in offsets[b, t])
                if unk is not None and ids[b, t] == unk:
                    cursor = max(cursor, e)
                    continue
                piece = toks[t]
                if prefix and piece.startswith(prefix):
                    piece = piece[len(prefix) :]
                if suffix and piece.endswith(suffix):
                    piece = piece[: -len(suffix)]
                piece = piece.upper()
                # the tokenizer's span is right when it holds the token and only whitespace (which
                # the pre-tokenizer drops) lies between it and the previous token
                if not (seq[s:e] == piece and s >= cursor and not seq[cursor:s].strip()):
                    at = seq.find(piece, cursor)
                    if at < 0 or seq[cursor:at].strip():
                        raise SaeflowError(
                            f"sequence {b}: token {t} {toks[t]!r} matches no bases at "
                            f"position {cursor} (tokenizer offsets {s}..{e}); cannot map "
                            "tokens to bases"
                        )
                    s, e = at, at + len(piece)
                    offsets[b, t] = (s, e)
                cursor = e


def load_dnabert2(path: str | os.PathLike, device=None) -> Dnabert2Adapter:
    """DNABERT-2 from a directory with the hub's files (local only, no remote code).

    Needs ``config.json``, ``tokenizer.json`` and ``model.safetensors`` or ``pytorch_model.bin``
    (or a sharded index of either). The weights are checked key by key against the published
    layout (see the module docstring) and loaded with ``strict=True``.
    """
    d = Path(path)
    if not d.is_dir():
        raise SaeflowError(
            f"{d}: not a directory; expected a DNABERT-2 snapshot (config.json, "
            "tokenizer.json, model.safetensors or pytorch_model.bin)"
        )
    for name in ("config.json", "tokenizer.json"):
        if not (d / name).is_file():
            raise SaeflowError(
                f"{d}: no {name}; expected a DNABERT-2 snapshot (config.json, tokenizer.json, "
                "model.safetensors or pytorch_model.bin)"
            )
    config = Dnabert2Config.from_json(d / "config.json")
    state_dict, source = read_checkpoint(d)
    tokenizer = load_dnabert2_tokenizer(d / "tokenizer.json", config.vocab_size)
    model = Dnabert2ForMaskedLM(config)
    load_checkpoint(model, state_dict, str(source))
    return Dnabert2Adapter(
        model, tokenizer, torch.device(device) if isinstance(device, str) else device
    )


def is_dnabert2(path: Path) -> bool:
    """``config.json`` with ALiBi's ``alibi_starting_size`` or
    an ``auto_map`` into ``bert_layers``."""
    if not (path / "config.json").is_file():
        return False
    cfg = read_config(path)
    auto_map = cfg.get("auto_map") or {}
    return "alibi_starting_size" in cfg or any("bert_layers" in str(v) for v in auto_map.values())


def dnabert2_vocab(path: Path) -> dict[int, str]:
    """id -> token of ``tokenizer.json``, read as the adapter reads it (BPE pieces)."""
    tok = load_dnabert2_tokenizer(path / "tokenizer.json")
    return {i: t for t, i in tok.get_vocab().items()}


register(
    Family("dnabert2", detect=is_dnabert2, load=load_dnabert2, vocab=dnabert2_vocab, priority=30)
)

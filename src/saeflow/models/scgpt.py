"""scGPT (the whole-human checkpoint and its relatives) without the ``scgpt`` package.

``load_scgpt(path)`` reads a released scGPT checkpoint directory::

    best_model.pt   the state dict (a mapping of tensors, as ``torch.save(model.state_dict())``)
    vocab.json      gene symbol -> token id (scGPT's ``GeneVocab.from_file``)
    args.json       the training arguments (embsize, nlayers, nheads, d_hid, pad_value, n_bins, ...)

and returns a :class:`ScgptAdapter` (the :mod:`saeflow.models.base` interface: tokenize a
:class:`~saeflow.models.base.CellMatrix`, run once with captures and patches).

What is reproduced, and from where (all in github.com/bowang-lab/scGPT unless said otherwise):

* **Model** -- ``scgpt/model/model.py`` ``TransformerModel._encode`` + ``ExprDecoder``:
  ``GeneEncoder`` (``encoder.embedding`` -> ``encoder.enc_norm``) plus the value encoder
  (``ContinuousValueEncoder``: clamp at 512, ``linear1`` -> ReLU -> ``linear2`` -> ``norm``; or
  ``CategoryValueEncoder``: ``embedding`` -> ``enc_norm``; or "scaling": gene embedding times the
  value), summed; then ``nlayers`` encoder layers with no final norm; the expression decoder
  ``decoder.fc`` (Linear, LeakyReLU, Linear, LeakyReLU, Linear -> 1 value per token) is the
  model's output (``logits``, shape (B, T): one predicted expression value per token, not a
  vocabulary distribution). No positional encoding: scGPT has none, so a cell is a set of genes.
* **Encoder layer** -- ``FlashTransformerEncoderLayer`` (same file) with flash-attn 1.x ``FlashMHA``
  (``flash_attn/flash_attention.py``: ``Wqkv`` -> ``b s (three h d)`` -> softmax(q k^T /
  sqrt(d_head)) over unpadded keys -> ``out_proj``), ReLU MLP ``linear1``/``linear2``,
  ``norm1``/``norm2``, LayerNorm eps 1e-5. Post-norm (the default, and what
  ``scgpt.tasks.embed_data`` hard-codes) is
  ``x = norm1(x + attn(x)); x = norm2(x + mlp(x))``. Pre-norm (``args.json`` ``"pre_norm": true``)
  is reproduced as the published layer writes it, ``x = norm1(x); x = x + attn(x); x = norm2(x);
  x = x + mlp(x)`` -- the residual stream itself is normed, unlike the usual pre-LN block.
  ``torch.nn.TransformerEncoderLayer`` (scGPT's non-flash path) computes the same post-norm block.
  Attention is written out explicitly (no ``nn.MultiheadAttention``, no fused kernels) with
  parameter-free ``nn.Identity`` modules on q, k, v and the probabilities so that hooks see them.
  Dropout is left out (inference only).
* **State-dict keys** -- the published names are kept. The attention input projection exists in
  three spellings, mapped onto one (documented in :func:`canonical_key`):
  flash-attn 1.x ``self_attn.Wqkv.{weight,bias}`` (the whole-human checkpoint), scGPT's newer
  flash wrapper ``self_attn._impl.Wqkv.*`` / ``self_attn._impl.out_proj.*``, and torch's
  ``self_attn.in_proj_{weight,bias}``. All three stack q, k, v row-blocks in the same order
  (q rows, then k, then v, each head-major), so the mapping is a rename, the same one
  ``scgpt/utils/util.py`` ``load_pretrained`` applies when flash-attn is absent. A leading
  ``module.`` (DistributedDataParallel) is dropped.
  Loading is strict about the parts used (a missing tensor or a shape mismatch is an error naming
  the key); tensors of heads saeflow does not run (``mvc_decoder``, ``cls_decoder``,
  ``flag_encoder``, ``batch_encoder``, ``dsbn``, ``grad_reverse_discriminator``,
  ``decoder.zero_logit``, generative ``cross_attn`` ...) are listed in one log line and skipped.
  A checkpoint trained with batch labels (``decoder.fc.0`` taking 2 x embsize inputs) or with
  domain-specific batch norm is refused / warned about, since its forward needs a batch label.
* **Vocabulary** -- ``embed_data``: ``vocab.json`` token -> id, with ``<pad>``, ``<cls>``,
  ``<eoc>`` appended at the next ids when missing (``GeneVocab.append_token``).
* **Tokenising a cell** -- ``embed_data`` + ``scgpt/data_collator.py`` ``DataCollator`` (the path
  the released checkpoints are used through for cell embeddings):

  1. genes are matched by exact HGNC symbol (``CellMatrix.gene_symbols``); genes absent from the
     vocabulary are dropped (``adata[:, id_in_vocab >= 0]``);
  2. per cell, the genes with nonzero counts are kept, in column order;
  3. their values are binned **per cell over all of them, before any length cut** (the collator
     bins, then samples): :func:`binning`, a reproduction of ``scgpt/preprocess.py`` ``binning``
     with ``_digitize(side="both")``: bin edges are the quantiles of the cell's nonzero values
     at ``linspace(0, 1, n_bins - 1)``; a value gets ``np.digitize`` of the edges, and a value
     that sits on one or more (repeated) edges is spread uniformly at random over the bins those
     edges delimit -- so zero -> 0 and nonzero -> 1..n_bins-1. ``embed_data`` bins raw counts;
     since quantile bins depend only on the order of the values within a cell, raw counts and
     normalised/log1p values (the fine-tuning tutorials' Preprocessor) give the same bins.
     ``n_bins`` is ``args.json`` ``n_bins`` (default 51, the value the collator hard-codes).
  4. ``<cls>`` is put first, with value ``pad_value`` (``embed_data``; the tutorials'
     ``tokenize_and_pad_batch`` uses 0 instead -- not what the checkpoints are embedded with);
  5. a cell with more than ``max_length - 1`` genes keeps ``max_length - 1`` of them chosen at
     random (the collator's ``_sample`` with ``keep_first_n_tokens=1``); saeflow keeps the chosen
     genes in column order (the model has no positions, so order only changes float rounding).
     ``selection="top"`` keeps the highest counts instead (ties: column order). ``max_length``
     counts ``<cls>``; default ``args.json`` ``max_seq_len``, else 1200 (``embed_data``'s default).
  6. the batch is padded to its longest cell with ``<pad>`` / ``pad_value``; the attention mask
     (1 = real token) hides pad keys, as ``src_key_padding_mask = ids == pad_id`` does.

  The published code draws its randomness (tie spreading, sampling) from the global numpy/torch
  state. saeflow seeds a generator **per cell from the cell's own content** (its in-vocabulary
  column indices and counts) and the tokenizer's ``seed``: tokenising is reproducible and a cell
  gets the same tokens whatever batch it is in (extraction tokenises twice and checks that).
  ``tie_break="left"`` gives the deterministic ``_digitize(side="one")`` instead.

Not reproduced: fp16 autocast (``embed_data`` runs under ``torch.cuda.amp.autocast``; saeflow runs
the checkpoint's dtype, float32), the generative (``FlashscGPTGenerator``) forward with gen tokens,
and the batch-label / DSBN paths.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from saeflow.models.base import CellMatrix, HookedAdapter, LayerSites, Site, TokenBatch
from saeflow.models.registry import Family, register
from saeflow.utils import SaeflowError

log = logging.getLogger(__name__)

FILES = ("best_model.pt", "vocab.json", "args.json")
SPECIAL_TOKENS = ("<pad>", "<cls>", "<eoc>")  # embed_data appends these when the vocab lacks them
REQUIRED_ARGS = ("embsize", "nlayers", "nheads", "d_hid", "pad_value")
DEFAULT_N_BINS = 51
DEFAULT_MAX_LENGTH = 1200
VALUE_CLAMP = 512  # ContinuousValueEncoder(max_value=512)


# --- configuration -------------------------------------------------------------------------
@dataclass
class ScgptConfig:
    """Sizes and conventions of one checkpoint (from ``args.json`` and the tensors' shapes)."""

    vocab_size: int
    d_model: int
    n_heads: int
    d_hid: int
    n_layers: int
    pad_token_id: int
    cls_token_id: int
    pad_value: float
    n_bins: int = DEFAULT_N_BINS
    input_emb_style: str = "continuous"  # "continuous" | "category" | "scaling"
    n_input_bins: int = 0  # category style: rows of value_encoder.embedding
    pre_norm: bool = False
    max_seq_len: int = DEFAULT_MAX_LENGTH
    layer_norm_eps: float = 1e-5

    # Hugging Face names, for code that reads ``model.config`` (ModelAdapter's defaults).
    @property
    def num_hidden_layers(self) -> int:
        return self.n_layers

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_attention_heads(self) -> int:
        return self.n_heads


# --- state-dict keys -----------------------------------------------------------------------
_LAYER = r"^transformer_encoder\.layers\.(\d+)\."
#: (pattern, replacement) applied in order: every published spelling -> saeflow's (flash-attn
# 1.x's).
KEY_RULES = (
    (
        re.compile(_LAYER + r"self_attn\.in_proj_weight$"),
        r"transformer_encoder.layers.\1.self_attn.Wqkv.weight",
    ),
    (
        re.compile(_LAYER + r"self_attn\.in_proj_bias$"),
        r"transformer_encoder.layers.\1.self_attn.Wqkv.bias",
    ),
    (
        re.compile(_LAYER + r"self_attn\._impl\.(Wqkv|out_proj)\.(weight|bias)$"),
        r"transformer_encoder.layers.\1.self_attn.\2.\3",
    ),
)


def canonical_key(key: str) -> str:
    """The saeflow name of a published state-dict key.

    * ``module.`` prefix (a DistributedDataParallel save) -> dropped;
    * ``transformer_encoder.layers.N.self_attn.in_proj_{weight,bias}`` (torch
      ``nn.TransformerEncoderLayer``, scGPT without flash-attn) ->
      ``...self_attn.Wqkv.{weight,bias}``;
    * ``...self_attn._impl.{Wqkv,out_proj}.*`` (scGPT's flash-attn 1.x/2.x compatibility wrapper)
      -> ``...self_attn.{Wqkv,out_proj}.*``;
    * everything else (flash-attn 1.x ``Wqkv``, ``out_proj``, the MLP, norms, encoders, decoder)
      is already saeflow's name.

    The three attention layouts store the same matrix: ``(3 * d_model, d_model)`` rows q | k | v,
    each block head-major (flash-attn's ``rearrange(qkv, "b s (three h d) -> b s three h d")`` and
    torch's ``in_proj_weight.chunk(3)`` agree), so renaming is all it takes.
    """
    if key.startswith("module."):
        key = key[len("module.") :]
    for pattern, repl in KEY_RULES:
        key = pattern.sub(repl, key)
    return key


def attention_layout(keys) -> str:
    """Which spelling of the attention projection a checkpoint uses (for the log)."""
    keys = list(keys)
    if any(k.endswith("self_attn.in_proj_weight") for k in keys):
        return "torch nn.TransformerEncoderLayer (in_proj_weight)"
    if any("self_attn._impl.Wqkv" in k for k in keys):
        return "scGPT flash-attn wrapper (_impl.Wqkv)"
    return "flash-attn 1.x FlashMHA (Wqkv)"


# --- value binning (scgpt/preprocess.py) ---------------------------------------------------
def _digitize(x: np.ndarray, bins: np.ndarray, rng=None, side: str = "both") -> np.ndarray:
    """scGPT's ``_digitize``: ``np.digitize``, spreading values that sit on (repeated) edges.

    ``side="one"``: ``np.digitize(x, bins)`` (left). ``side="both"`` (the published default): a
    value between its right digit ``r`` (edges strictly below it) and left digit ``l`` (edges at or
    below it) becomes ``ceil(l - u * (l - r))`` with ``u ~ U[0, 1)``, i.e. uniform on ``r+1..l``; a
    value on no edge has ``l == r`` and keeps ``l``. ``rng`` replaces the published global
    ``np.random.rand`` (a fresh unseeded generator when None).
    """
    left = np.digitize(x, bins)
    if side == "one":
        return left.astype(np.int64)
    right = np.digitize(x, bins, right=True)
    u = (rng if rng is not None else np.random.default_rng()).random(len(x))
    return np.ceil(u * (right - left) + left).astype(np.int64)


def binning(row, n_bins: int, rng=None, tie_break: str = "random") -> np.ndarray:
    """Per-cell quantile binning of one cell's values, as ``scgpt.preprocess.binning`` does.

    Zero stays 0. The edges are ``np.quantile(nonzero values, np.linspace(0, 1, n_bins - 1))``
    (``n_bins - 1`` edges, the first the smallest nonzero value), and each nonzero value gets
    :func:`_digitize` of them: 1..n_bins-1. A row with no nonzero value is all zeros.
    ``tie_break``: "random" (published ``side="both"``, drawing from ``rng``) or "left"
    (``side="one"``). Returns int64.
    """
    row = np.asarray(row, dtype=np.float64)
    if row.ndim != 1:
        raise SaeflowError(f"binning expects one cell (a 1-d row), got shape {row.shape}")
    if tie_break not in ("random", "left"):
        raise SaeflowError(f"tie_break must be 'random' or 'left', got {tie_break!r}")
    if n_bins < 2:
        raise SaeflowError(f"n_bins must be >= 2, got {n_bins}")
    side = "both" if tie_break == "random" else "one"
    out = np.zeros(len(row), dtype=np.int64)
    if len(row) == 0 or row.max() == 0:
        return out
    nz = np.nonzero(row)[0]
    vals = row[nz]
    edges = np.quantile(vals, np.linspace(0, 1, n_bins - 1))
    out[nz] = _digitize(vals, edges, rng, side)
    return out


# --- tokenizer ------------------------------------------------------------------------------
class ScgptTokenizer:
    """Cells -> scGPT tokens (see the module docstring, "Tokenising a cell", for every decision)."""

    def __init__(
        self,
        vocab: dict[str, int],
        *,
        pad_token: str = "<pad>",
        pad_value: float = -2,
        n_bins: int = DEFAULT_N_BINS,
        max_length: int = DEFAULT_MAX_LENGTH,
        seed: int = 0,
        tie_break: str = "random",
        selection: str = "sample",
    ):
        self.vocab = dict(vocab)
        for tok in (pad_token, "<cls>"):
            if tok not in self.vocab:
                raise SaeflowError(f"scGPT vocabulary has no {tok!r} token")
        self.pad_token = pad_token
        self.pad_id = int(self.vocab[pad_token])
        self.cls_id = int(self.vocab["<cls>"])
        self.pad_value = float(pad_value)
        self.n_bins = int(n_bins)
        self.max_length = int(max_length)
        self.seed = int(seed)
        if tie_break not in ("random", "left"):
            raise SaeflowError(f"tie_break must be 'random' or 'left', got {tie_break!r}")
        if selection not in ("sample", "top"):
            raise SaeflowError(f"selection must be 'sample' or 'top', got {selection!r}")
        self.tie_break = tie_break
        self.selection = selection
        self._specials = set(SPECIAL_TOKENS) | {pad_token}
        self._cache: tuple | None = None  # (gene_symbols array, in-vocab columns, their ids)

    def __len__(self) -> int:
        return len(self.vocab)

    def gene_columns(self, symbols) -> tuple[np.ndarray, np.ndarray]:
        """(columns whose symbol is in the vocabulary, their
        token ids); cached per symbols array."""
        if self._cache is not None and self._cache[0] is symbols:
            return self._cache[1], self._cache[2]
        syms = np.asarray(symbols).astype(str)
        ids = np.array(
            [-1 if s in self._specials else self.vocab.get(s, -1) for s in syms], dtype=np.int64
        )
        cols = np.nonzero(ids >= 0)[0]
        log.info("scGPT vocabulary: matched %d/%d genes by symbol", len(cols), len(syms))
        if len(cols) == 0:
            raise SaeflowError(
                f"none of the {len(syms)} gene symbols is in the scGPT vocabulary "
                f"(first few: {', '.join(syms[:5])}); scGPT needs HGNC symbols such as 'CD3E', "
                "not Ensembl ids"
            )
        self._cache = (symbols, cols, ids[cols])
        return cols, ids[cols]

    def _rng(self, cols: np.ndarray, counts: np.ndarray):
        """A generator seeded by ``seed`` and the cell's content (batch-independent randomness)."""
        import hashlib

        h = hashlib.blake2b(digest_size=8)
        h.update(np.ascontiguousarray(cols, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(counts, dtype=np.float64).tobytes())
        return np.random.default_rng([self.seed, int.from_bytes(h.digest(), "little")])

    def cell_tokens(self, cols: np.ndarray, counts: np.ndarray, max_length: int):
        """One cell: (positions into ``cols`` kept, their binned values), ``<cls>`` not included."""
        rng = self._rng(cols, counts)
        # before selection, as the collator
        binned = binning(counts, self.n_bins, rng, self.tie_break)
        keep = np.arange(len(cols))
        n = max_length - 1
        if len(keep) > n:
            if self.selection == "sample":
                keep = np.sort(rng.permutation(len(keep))[:n])
            else:
                keep = np.sort(np.argsort(-counts, kind="stable")[:n])
        return keep, binned[keep]

    def __call__(self, cells: CellMatrix, max_length: int | None = None) -> TokenBatch:
        if not isinstance(cells, CellMatrix):
            raise SaeflowError(
                f"scGPT tokenizes a CellMatrix (cells x genes counts), got {type(cells).__name__}"
            )
        if cells.gene_symbols is None:
            raise SaeflowError(
                "scGPT needs gene symbols (its vocabulary is HGNC symbols) but this CellMatrix "
                "has gene_symbols=None; give the dataset's gene symbol column"
            )
        X = cells.X
        n_genes = X.shape[1]
        if len(cells.gene_symbols) != n_genes:
            raise SaeflowError(
                f"CellMatrix has {n_genes} genes but {len(cells.gene_symbols)} gene symbols"
            )
        max_length = int(max_length or self.max_length)
        if max_length < 2:
            raise SaeflowError(f"max_length must be >= 2 (<cls> and one gene), got {max_length}")
        cols, ids = self.gene_columns(cells.gene_symbols)
        symbols = np.asarray(cells.gene_symbols).astype(str)

        import scipy.sparse as sp

        Xv = sp.csr_matrix(X)[:, cols] if sp.issparse(X) else sp.csr_matrix(np.asarray(X)[:, cols])
        Xv.sum_duplicates()
        Xv.sort_indices()
        rows = []
        for i in range(Xv.shape[0]):
            a, b = Xv.indptr[i], Xv.indptr[i + 1]
            pos, counts = Xv.indices[a:b].astype(np.int64), Xv.data[a:b].astype(np.float64)
            if (counts < 0).any():
                raise SaeflowError(
                    f"cell {cells.names[i]!r} has negative values; scGPT bins raw counts "
                    "(non-negative), not scaled data"
                )
            nz = counts != 0
            pos, counts = pos[nz], counts[nz]
            keep, values = self.cell_tokens(cols[pos], counts, max_length)
            rows.append((pos[keep], values))
        T = max(1 + len(p) for p, _ in rows) if rows else 1
        B = len(rows)
        input_ids = np.full((B, T), self.pad_id, dtype=np.int64)
        values = np.full((B, T), self.pad_value, dtype=np.float32)
        mask = np.zeros((B, T), dtype=np.int64)
        genes = np.full((B, T), "", dtype=object)
        for b, (pos, vals) in enumerate(rows):
            n = 1 + len(pos)
            input_ids[b, 0] = self.cls_id
            input_ids[b, 1:n] = ids[pos]
            values[b, 1:n] = vals
            mask[b, :n] = 1
            genes[b, 1:n] = symbols[cols[pos]]
        special = np.ones((B, T), dtype=bool)
        special[:, 1:] = mask[:, 1:] == 0
        return TokenBatch(
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(mask),
            offsets=np.zeros((B, T, 2), dtype=np.int64),
            special=special,
            genes=genes,
            extra={"values": torch.from_numpy(values)},
        )


# --- the model: torch modules (this module is imported only when the scgpt family is used) --
@dataclass
class ScgptOutput:
    logits: object  # (B, T) expression prediction of ExprDecoder
    last_hidden_state: object  # (B, T, d)
    hidden_states: tuple | None = None  # (embeddings, block 1, ..., block L)
    attentions: tuple | None = None  # per block (B, H, T, T)


class GeneEncoder(nn.Module):
    """``scgpt.model.GeneEncoder``: embedding -> LayerNorm."""

    def __init__(self, n: int, d: int, eps: float):
        super().__init__()
        self.embedding = nn.Embedding(n, d)
        self.enc_norm = nn.LayerNorm(d, eps=eps)

    def forward(self, ids):
        return self.enc_norm(self.embedding(ids))


class ContinuousValueEncoder(nn.Module):
    """``scgpt.model.ContinuousValueEncoder``: clamp(max=512) -> Linear(1, d) -> ReLU -> Linear ->
    LayerNorm."""

    def __init__(self, d: int, eps: float, max_value: float = VALUE_CLAMP):
        super().__init__()
        self.linear1 = nn.Linear(1, d)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d, eps=eps)
        self.max_value = max_value

    def forward(self, x):
        x = torch.clamp(x.unsqueeze(-1), max=self.max_value)
        return self.norm(self.linear2(self.activation(self.linear1(x))))


class CategoryValueEncoder(nn.Module):
    """``scgpt.model.CategoryValueEncoder``: bin index -> embedding -> LayerNorm."""

    def __init__(self, n: int, d: int, eps: float):
        super().__init__()
        self.embedding = nn.Embedding(n, d)
        self.enc_norm = nn.LayerNorm(d, eps=eps)

    def forward(self, x):
        return self.enc_norm(self.embedding(x.long()))


class SelfAttention(nn.Module):
    """flash-attn 1.x ``FlashMHA`` written out: Wqkv -> per-head softmax(q k^T / sqrt(dh)) v ->
    out_proj.

    ``hook_q``/``hook_k``/``hook_v`` see (B, T, H*dh) right after the projection, ``hook_attn``
    the probabilities (B, H, T, T); the input of ``out_proj`` is the concatenated head outputs.
    """

    def __init__(self, d: int, h: int):
        super().__init__()
        self.n_heads, self.d_head = h, d // h
        self.Wqkv = nn.Linear(d, 3 * d)
        self.hook_q, self.hook_k, self.hook_v = nn.Identity(), nn.Identity(), nn.Identity()
        self.hook_attn = nn.Identity()
        self.out_proj = nn.Linear(d, d)

    def forward(self, x, key_pad):
        B, T, d = x.shape
        H, dh = self.n_heads, self.d_head
        q, k, v = self.Wqkv(x).split(d, dim=-1)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)

        def heads(t):
            return t.reshape(B, T, H, dh).transpose(1, 2)

        scores = heads(q) @ heads(k).transpose(-1, -2) * (dh**-0.5)
        if key_pad is not None:
            scores = scores.masked_fill(key_pad[:, None, None, :], float("-inf"))
        probs = self.hook_attn(torch.softmax(scores, dim=-1))
        ctx = (probs @ heads(v)).transpose(1, 2).reshape(B, T, d)
        return self.out_proj(ctx), probs


class EncoderLayer(nn.Module):
    """``FlashTransformerEncoderLayer`` (post- or scGPT's pre-norm), ReLU MLP, no dropout."""

    def __init__(self, d: int, h: int, d_hid: int, eps: float, pre_norm: bool):
        super().__init__()
        self.self_attn = SelfAttention(d, h)
        self.linear1 = nn.Linear(d, d_hid)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(d_hid, d)
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.pre_norm = pre_norm
        self.last_attn = None

    def mlp(self, x):
        return self.linear2(self.activation(self.linear1(x)))

    def forward(self, x, key_pad=None):
        if self.pre_norm:
            x = self.norm1(x)
            a, self.last_attn = self.self_attn(x, key_pad)
            x = self.norm2(x + a)
            return x + self.mlp(x)
        a, self.last_attn = self.self_attn(x, key_pad)
        x = self.norm1(x + a)
        return self.norm2(x + self.mlp(x))


class TransformerEncoder(nn.Module):
    """Holds ``layers`` (the published ``transformer_encoder.layers.N`` names); no final norm."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)


class ExprDecoder(nn.Module):
    """``scgpt.model.ExprDecoder`` without batch labels: fc = Linear, LeakyReLU, Linear, LeakyReLU,
    Linear(d, 1)."""

    def __init__(self, d: int):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(d, d), nn.LeakyReLU(), nn.Linear(d, d), nn.LeakyReLU(), nn.Linear(d, 1)
        )

    def forward(self, x):
        return self.fc(x).squeeze(-1)


class ScgptModel(nn.Module):
    """scGPT ``TransformerModel`` (perceptual forward) + expression decoder; see the module
    docstring."""

    def __init__(self, config: ScgptConfig):
        super().__init__()
        c = self.config = config
        eps = c.layer_norm_eps
        self.encoder = GeneEncoder(c.vocab_size, c.d_model, eps)
        if c.input_emb_style == "continuous":
            self.value_encoder = ContinuousValueEncoder(c.d_model, eps)
        elif c.input_emb_style == "category":
            self.value_encoder = CategoryValueEncoder(c.n_input_bins, c.d_model, eps)
        elif c.input_emb_style == "scaling":
            self.value_encoder = nn.Identity()
        else:
            raise SaeflowError(f"unknown scGPT input_emb_style {c.input_emb_style!r}")
        self.hook_embed = nn.Identity()  # residual layer 0: the summed embeddings
        self.transformer_encoder = TransformerEncoder(
            [
                EncoderLayer(c.d_model, c.n_heads, c.d_hid, eps, c.pre_norm)
                for _ in range(c.n_layers)
            ]
        )
        self.decoder = ExprDecoder(c.d_model)

    def forward(
        self,
        input_ids,
        values,
        attention_mask=None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        **_,
    ):
        if attention_mask is None:
            key_pad = input_ids.eq(self.config.pad_token_id)
        else:
            key_pad = attention_mask.eq(0)
        genes = self.encoder(input_ids)
        vals = self.value_encoder(values)
        if self.config.input_emb_style == "scaling":
            x = genes * vals.unsqueeze(-1)
        else:
            x = genes + vals
        x = self.hook_embed(x)
        hidden = [x]
        attns = []
        for layer in self.transformer_encoder.layers:
            x = layer(x, key_pad)
            hidden.append(x)
            if output_attentions:
                attns.append(layer.last_attn)
            layer.last_attn = None
        return ScgptOutput(
            logits=self.decoder(x),
            last_hidden_state=x,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attns) if output_attentions else None,
        )


def build_model(config: ScgptConfig):
    """An untrained :class:`ScgptModel` of ``config``'s sizes (weights come from
    :func:`load_scgpt`)."""
    return ScgptModel(config)


# --- the adapter ----------------------------------------------------------------------------
class ScgptAdapter(HookedAdapter):
    """scGPT behind the saeflow interface.

    Residual layer 0 is the summed gene + value embedding (``model.hook_embed``), layer L the
    output of encoder layer L (no final norm exists). Block L's sites: q/k/v = outputs of
    ``self_attn.hook_{q,k,v}``, attention = ``self_attn.hook_attn``, head outputs = input of
    ``self_attn.out_proj``, MLP = output of the ReLU (``activation``). ``RunResult.logits`` is the
    expression decoder's prediction, shape (B, T).
    """

    family = "scgpt"
    kind = "cells"

    def __init__(
        self, model, tokenizer: ScgptTokenizer, device=None, checkpoint_keys: dict | None = None
    ):
        super().__init__(model, tokenizer, device)
        self.config: ScgptConfig = model.config
        #: {"used": published keys loaded, "unused": published keys skipped} (as in the file)
        self.checkpoint_keys = checkpoint_keys or {"used": [], "unused": []}

    @property
    def n_layers(self) -> int:
        return self.config.n_layers

    @property
    def d_model(self) -> int:
        return self.config.d_model

    @property
    def n_heads(self) -> int:
        return self.config.n_heads

    def tokenize(self, inputs: CellMatrix, max_length: int | None = None) -> TokenBatch:
        return self.tokenizer(inputs, max_length=max_length)

    def blocks(self) -> list:
        return list(self.model.transformer_encoder.layers)

    def resid_site(self, layer: int) -> Site:
        if layer == 0:
            return Site(self.model.hook_embed, "output")
        return super().resid_site(layer)

    def layer_sites(self, layer: int) -> LayerSites:
        block = self.blocks()[layer - 1]
        att = block.self_attn
        return LayerSites(
            q=Site(att.hook_q),
            k=Site(att.hook_k),
            v=Site(att.hook_v),
            head_out=Site(att.out_proj, "input"),
            mlp=Site(block.activation),
            attn=Site(att.hook_attn),
        )

    def head_weights(self, layer: int) -> dict:
        """W_Q, W_K, W_V (H, d_model, d_head) from ``Wqkv`` (rows q | k | v), W_O (H, d_head,
        d_model)."""
        self._check_layer(layer, 1)
        att = self.blocks()[layer - 1].self_attn
        H, dh, d = self.n_heads, self.d_head, self.d_model
        with torch.no_grad():
            W = att.Wqkv.weight.detach()
            w = {
                name: W[i * d : (i + 1) * d].T.reshape(d, H, dh).permute(1, 0, 2).clone()
                for i, name in enumerate(("W_Q", "W_K", "W_V"))
            }
            w["W_O"] = att.out_proj.weight.detach().T.reshape(H, dh, d).clone()
        return w

    def _forward(self, batch: TokenBatch, **kw):
        values = (batch.extra or {}).get("values")
        if values is None:
            raise SaeflowError(
                "scGPT needs the binned expression values (TokenBatch.extra['values']); "
                "tokenize cells with the scGPT adapter"
            )
        return self.model(
            input_ids=batch.input_ids.to(self.device),
            values=values.to(self.device),
            attention_mask=batch.attention_mask.to(self.device),
            **kw,
        )


# --- loading --------------------------------------------------------------------------------
def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SaeflowError(
            f"{path}: cannot read the scGPT {what} ({type(e).__name__}: {e})"
        ) from None


def read_vocab(path: Path) -> dict[str, int]:
    """``vocab.json`` (token -> id) with the special tokens appended as ``embed_data`` does."""
    raw = _read_json(path, "vocabulary")
    if not isinstance(raw, dict) or not raw:
        raise SaeflowError(f"{path}: expected a JSON object mapping gene symbol -> token id")
    try:
        vocab = {str(k): int(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise SaeflowError(f"{path}: token ids must be integers") from None
    ids = list(vocab.values())
    if min(ids) < 0 or len(set(ids)) != len(ids):
        raise SaeflowError(f"{path}: token ids must be distinct and non-negative")
    nxt = max(ids) + 1
    for tok in SPECIAL_TOKENS:
        if tok not in vocab:
            vocab[tok] = nxt
            nxt += 1
            log.info(
                "%s: %s not in the vocabulary; appended with id %d (as scGPT's embed_data does)",
                path,
                tok,
                vocab[tok],
            )
    return vocab


def _load_state_dict(path: Path) -> dict:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch save, pickled objects beyond tensors
        raise SaeflowError(
            f"{path}: cannot load as a state dict ({type(e).__name__}: {e})"
        ) from None
    # Released scGPT checkpoints are the bare state dict; a training-loop save wraps it
    # ({"model_state_dict": ..., "optimizer": ..., "epoch": ...}): take the wrapped one then.
    if isinstance(sd, dict) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        for wrap in ("model_state_dict", "state_dict", "model"):
            if isinstance(sd.get(wrap), dict):
                sd = sd[wrap]
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise SaeflowError(
            f"{path}: expected a mapping of parameter name -> tensor "
            "(torch.save(model.state_dict()))"
        )
    return sd


def load_scgpt(
    path: str | os.PathLike,
    device=None,
    *,
    seed: int = 0,
    tie_break: str = "random",
    selection: str = "sample",
) -> ScgptAdapter:
    """Load an scGPT checkpoint directory (``best_model.pt``, ``vocab.json``, ``args.json``); no
    network.

    ``seed``, ``tie_break`` and ``selection`` configure the tokenizer (module docstring). Strict
    about the tensors the forward pass uses; the others are listed in one log line
    (``adapter.checkpoint_keys`` has both lists, in the file's spelling)."""
    path = Path(path)
    if not path.is_dir():
        raise SaeflowError(
            f"{path}: not a directory; an scGPT checkpoint is a directory with {', '.join(FILES)}"
        )
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise SaeflowError(
            f"{path}: not an scGPT checkpoint directory, missing {', '.join(missing)} "
            f"(expected {', '.join(FILES)})"
        )
    args = _read_json(path / "args.json", "arguments")
    if not isinstance(args, dict):
        raise SaeflowError(f"{path / 'args.json'}: expected a JSON object")
    absent = [k for k in REQUIRED_ARGS if k not in args]
    if absent:
        raise SaeflowError(
            f"{path / 'args.json'}: missing {', '.join(absent)} (needs {', '.join(REQUIRED_ARGS)})"
        )
    vocab = read_vocab(path / "vocab.json")
    pad_token = str(args.get("pad_token", "<pad>"))
    if pad_token not in vocab:
        raise SaeflowError(
            f"{path / 'vocab.json'}: pad token {pad_token!r} (args.json pad_token) not in the "
            "vocabulary"
        )

    raw = _load_state_dict(path / "best_model.pt")
    sd: dict = {}
    origin: dict = {}
    for k, v in raw.items():
        c = canonical_key(k)
        if c in sd:
            raise SaeflowError(
                f"{path / 'best_model.pt'}: keys {origin[c]!r} and {k!r} both map to {c!r}"
            )
        sd[c], origin[c] = v, k

    d, H, L = int(args["embsize"]), int(args["nheads"]), int(args["nlayers"])
    if d % H:
        raise SaeflowError(f"{path / 'args.json'}: embsize {d} is not divisible by nheads {H}")
    layer_ids = {int(m.group(1)) for k in sd if (m := re.match(_LAYER, k))}
    if layer_ids and max(layer_ids) + 1 != L:
        raise SaeflowError(
            f"{path}: args.json nlayers={L} but best_model.pt has {max(layer_ids) + 1} encoder "
            "layers"
        )
    if "value_encoder.embedding.weight" in sd:
        style, n_input_bins = "category", int(sd["value_encoder.embedding.weight"].shape[0])
    elif "value_encoder.linear1.weight" in sd:
        style, n_input_bins = "continuous", 0
    else:
        style, n_input_bins = "scaling", 0
    declared = args.get("input_emb_style")
    if declared is not None and declared != style:
        raise SaeflowError(
            f"{path}: args.json input_emb_style={declared!r} but best_model.pt has the "
            f"value encoder of {style!r}"
        )
    emb = sd.get("encoder.embedding.weight")
    if emb is None:
        raise SaeflowError(
            f"{path / 'best_model.pt'}: no encoder.embedding.weight (is this an scGPT "
            "TransformerModel?)"
        )
    if emb.shape[0] < len(vocab) or max(vocab.values()) >= emb.shape[0]:
        raise SaeflowError(
            f"{path}: the gene embedding has {emb.shape[0]} rows but vocab.json (with specials) "
            f"needs {max(len(vocab), max(vocab.values()) + 1)}"
        )
    dec = sd.get("decoder.fc.0.weight")
    if dec is not None and dec.shape[-1] == 2 * d:
        raise SaeflowError(
            f"{path}: the expression decoder takes 2 x embsize inputs: this checkpoint was trained "
            "with batch labels (use_batch_labels), which saeflow does not run"
        )
    n_bins = int(args.get("n_bins", DEFAULT_N_BINS))
    pad_value = float(args["pad_value"])
    if style == "category" and not (0 <= pad_value < n_input_bins and n_bins <= n_input_bins):
        raise SaeflowError(
            f"{path}: category value encoder has {n_input_bins} bins but n_bins={n_bins}, "
            f"pad_value={pad_value}"
        )
    config = ScgptConfig(
        vocab_size=int(emb.shape[0]),
        d_model=d,
        n_heads=H,
        d_hid=int(args["d_hid"]),
        n_layers=L,
        pad_token_id=vocab[pad_token],
        cls_token_id=vocab["<cls>"],
        pad_value=pad_value,
        n_bins=n_bins,
        input_emb_style=style,
        n_input_bins=n_input_bins,
        pre_norm=bool(args.get("pre_norm", False)),
        max_seq_len=int(args.get("max_seq_len") or DEFAULT_MAX_LENGTH),
    )
    model = build_model(config)
    own = model.state_dict()
    lacking = [k for k in own if k not in sd]
    if lacking:
        raise SaeflowError(
            f"{path / 'best_model.pt'}: missing {len(lacking)} tensors the model needs: "
            f"{', '.join(lacking[:8])}{' ...' if len(lacking) > 8 else ''}"
        )
    bad = [
        f"{origin[k]} {tuple(sd[k].shape)} (expected {tuple(own[k].shape)})"
        for k in own
        if tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if bad:
        raise SaeflowError(f"{path / 'best_model.pt'}: shape mismatch: {'; '.join(bad[:5])}")
    model.load_state_dict({k: sd[k].to(torch.float32) for k in own}, strict=True)
    used = [origin[k] for k in own]
    unused = sorted(origin[k] for k in sd if k not in own)
    if any(k.startswith(("dsbn.", "bn.")) for k in unused):
        log.warning(
            "%s: domain-specific batch norm tensors present; saeflow skips DSBN, so embeddings "
            "differ from "
            "a forward pass with batch labels",
            path,
        )
    log.info(
        "scGPT %s: %d layers, d_model %d, %d heads, %s values, %s-norm, attention layout %s; "
        "loaded %d tensors, %d unused: %s",
        path,
        L,
        d,
        H,
        style,
        "pre" if config.pre_norm else "post",
        attention_layout(raw),
        len(used),
        len(unused),
        ", ".join(unused) or "none",
    )
    tokenizer = ScgptTokenizer(
        vocab,
        pad_token=pad_token,
        pad_value=pad_value,
        n_bins=n_bins,
        max_length=config.max_seq_len,
        seed=seed,
        tie_break=tie_break,
        selection=selection,
    )
    if device is not None and not isinstance(device, torch.device):
        device = torch.device(device)
    return ScgptAdapter(model, tokenizer, device, checkpoint_keys={"used": used, "unused": unused})


def is_scgpt(path: Path) -> bool:
    """scGPT's released layout: no ``config.json``; ``args.json``, ``vocab.json`` and a ``*.pt``."""
    return (
        not (path / "config.json").is_file()
        and (path / "args.json").is_file()
        and (path / "vocab.json").is_file()
        and any(path.glob("*.pt"))
    )


def scgpt_vocab(path: Path) -> dict[int, str]:
    """id -> gene symbol of ``vocab.json`` (the specials appended as the adapter does)."""
    return {i: t for t, i in read_vocab(path / "vocab.json").items()}


register(
    Family(
        "scgpt",
        detect=is_scgpt,
        load=load_scgpt,
        vocab=scgpt_vocab,
        priority=10,
        layout="an scGPT checkpoint (args.json, vocab.json, *.pt)",
    )
)

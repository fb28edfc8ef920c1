"""Load a masked LM from a directory (``save_pretrained`` layout) behind one interface.

The toy model the workflow trains and real checkpoints (DNABERT, Nucleotide
Transformer, snapshots under ``resources/models/``) go through the same
``load_model``; family-specific details live in adapter subclasses. The interface
(tokenise, run with captures and patches) is :mod:`saeflow.models.base`.
"""

from __future__ import annotations

import logging
import os

from ..utils import SaeflowError
from .base import HookedAdapter, LayerSites, Site, TokenBatch

log = logging.getLogger(__name__)


class HFMaskedLMAdapter(HookedAdapter):
    """Hugging Face BERT-style masked LMs (``BertForMaskedLM``, ``EsmForMaskedLM``): sites by module name.

    Block ``L`` is ``encoder.layer[L-1]``; its self-attention module has ``query``/``key``/``value``
    projections and returns ``(concatenated head outputs, probabilities)``; its ``intermediate``
    module's output is the MLP activation. ESM's last residual layer is the final layer norm's
    output (``encoder.emb_layer_norm_after``), as ``hidden_states[-1]`` reports it.
    """

    def blocks(self) -> list:
        blocks = list(self.model.base_model.encoder.layer)
        if len(blocks) != self.n_layers:
            raise SaeflowError(f"{type(self.model).__name__}: {len(blocks)} blocks, config says {self.n_layers}")
        return blocks

    def resid_site(self, layer: int) -> Site:
        enc = self.model.base_model.encoder
        if layer == self.n_layers and getattr(enc, "emb_layer_norm_after", None) is not None:
            return Site(enc.emb_layer_norm_after, "output")
        return super().resid_site(layer)

    def layer_sites(self, layer: int) -> LayerSites:
        block = self.blocks()[layer - 1]
        att = block.attention.self
        return LayerSites(q=Site(att.query), k=Site(att.key), v=Site(att.value),
                          head_out=Site(att, "output", 0), mlp=Site(block.intermediate), attn=None)

    def head_weights(self, layer: int) -> dict:
        import torch

        block = self.blocks()[layer - 1]
        att, H, dh, d = block.attention.self, self.n_heads, self.d_head, self.d_model
        with torch.no_grad():
            w = {k: getattr(att, m).weight.detach().T.reshape(d, H, dh).permute(1, 0, 2).clone()
                 for k, m in (("W_Q", "query"), ("W_K", "key"), ("W_V", "value"))}
            w["W_O"] = block.attention.output.dense.weight.detach().T.reshape(H, dh, d).clone()
        return w


class DnaAdapter(HFMaskedLMAdapter):
    """A DNA masked LM whose fast tokenizer returns token -> base offsets (the toy model's)."""

    family = "hf_dna"
    kind = "dna"

    def tokenize(self, sequences: list[str], max_length: int | None = None) -> TokenBatch:
        enc = self.tokenizer(
            [s.upper() for s in sequences],
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            padding=True,
            truncation=max_length is not None,
            max_length=max_length,
            return_tensors="pt",
        )
        special = enc["special_tokens_mask"].numpy().astype(bool) | (enc["attention_mask"].numpy() == 0)
        return TokenBatch(enc["input_ids"], enc["attention_mask"], enc["offset_mapping"].numpy(), special)


def load_model(path: str | os.PathLike, device=None) -> DnaAdapter:
    """Load model + tokenizer saved with ``save_pretrained`` (local files only)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "config.json")):
        raise SaeflowError(f"{path}: not a model directory (no config.json); expected a save_pretrained layout")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForMaskedLM.from_pretrained(path, local_files_only=True)
    if not getattr(tokenizer, "is_fast", False):
        raise SaeflowError(f"{path}: tokenizer is not a fast tokenizer; token->base offsets need one")
    return DnaAdapter(model, tokenizer, device)


def load_vocab(path: str | os.PathLike) -> dict[int, str]:
    """id -> token string of a saved tokenizer (cheap: no model weights)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return {i: t for t, i in tok.get_vocab().items()}

"""Load a masked LM from a directory (``save_pretrained`` layout) behind one interface.

The toy model the workflow trains and real checkpoints (DNABERT, Nucleotide
Transformer, snapshots under ``resources/models/``) go through the same
``load_model``; family-specific details live in adapter subclasses.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from ..utils import SaeflowError

log = logging.getLogger(__name__)


@dataclass
class TokenBatch:
    input_ids: "object"  # torch.LongTensor (B, T)
    attention_mask: "object"  # (B, T)
    offsets: np.ndarray  # (B, T, 2) base span of each token in its sequence; (0, 0) for specials
    special: np.ndarray  # (B, T) bool: special or padding tokens


class DnaAdapter:
    """A DNA masked LM: tokenise with offsets, run once, return every layer."""

    def __init__(self, model, tokenizer, device=None):
        import torch

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device or torch.device("cpu")
        self.model.to(self.device)

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

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

    def hidden_states(self, batch: TokenBatch, layers: list[int]):
        """One forward pass; returns {layer: (B, T, d) tensor}. Layer 0 = embeddings, L = block L output."""
        import torch

        with torch.inference_mode():
            out = self.model(
                input_ids=batch.input_ids.to(self.device),
                attention_mask=batch.attention_mask.to(self.device),
                output_hidden_states=True,
            )
        hs = out.hidden_states
        return {layer: hs[layer] for layer in layers}


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

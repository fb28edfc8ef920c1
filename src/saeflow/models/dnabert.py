"""DNABERT (Ji et al. 2021; ``zhihan1996/DNA_bert_3`` .. ``DNA_bert_6``): BERT over overlapping
k-mers.

Model: a plain ``BertForMaskedLM`` (the checkpoints' state dicts use the standard BERT key names).
Newer revisions of the hub repositories add an ``auto_map`` pointing at custom code
(``dnabert_layer.BertForMaskedLM``); saeflow ignores it and loads ``transformers.BertForMaskedLM``
directly, with no remote code (the masked-LM weights are the same).

Tokenizer: the checkpoints ship ``vocab.txt`` (``[PAD] [UNK] [CLS] [SEP] [MASK]``, then the k-mers)
and a ``tokenizer_config.json`` naming a ``DNATokenizer`` class that ``AutoTokenizer`` cannot load,
so saeflow tokenizes from ``vocab.txt`` itself (:class:`KmerTokenizer`): a sequence of ``n`` bases
becomes its ``n - k + 1`` overlapping k-mers, ``[CLS] k-mer_0 ... k-mer_{n-k} [SEP]``; token ``i``
(the i-th k-mer) covers bases ``[i, i + k)``. A k-mer not in the vocabulary (one containing N or any
non-ACGT letter) becomes ``[UNK]`` and keeps its real span. A sequence shorter than k has no
content tokens (just ``[CLS] [SEP]``). This is what DNABERT's own ``seq2kmer`` + ``DNATokenizer``
do.

How k is read: from ``vocab.txt`` -- the length of its k-mer tokens, which must be all ``4**k``
k-mers of one length (DNABERT's ``config.json`` carries no k). It is cross-checked against
``config.json``: the embedding matrix (``vocab_size``) must cover the vocabulary.

Length: at most ``max_position_embeddings`` tokens (512 for the released models), i.e. 510 k-mers,
specials included; longer sequences raise unless ``max_length`` asks for truncation.
"""

from __future__ import annotations

import os
from pathlib import Path

from saeflow.models.base import TokenBatch
from saeflow.models.dna_tokens import (
    VocabTokenizer,
    assemble,
    kmer_length,
    read_vocab_txt,
    vocab_head,
    vocab_txt_ids,
)
from saeflow.models.hf import HFMaskedLMAdapter, load_checked, read_config
from saeflow.models.registry import Family, register
from saeflow.utils import SaeflowError

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class KmerTokenizer(VocabTokenizer):
    """DNABERT's overlapping k-mer tokenizer, built from
    ``vocab.txt`` (see the module docstring)."""

    pad_token, unk_token, cls_token, sep_token, mask_token = SPECIALS

    def __init__(self, tokens: list[str], path):
        super().__init__(tokens, path)
        if self.sep_token not in self.vocab:
            raise SaeflowError(f"{self.path}: no '[SEP]' token in the vocabulary")
        self.k = kmer_length(self.tokens, set(SPECIALS), self.path)

    @classmethod
    def from_file(cls, path) -> "KmerTokenizer":
        return cls(read_vocab_txt(path), path)

    @property
    def sep_token_id(self) -> int:
        return self.vocab[self.sep_token]

    def pieces(self, seq: str) -> list[tuple[int, int, int]]:
        k, vocab, unk = self.k, self.vocab, self.unk_token_id
        return [(vocab.get(seq[i : i + k], unk), i, i + k) for i in range(len(seq) - k + 1)]

    def encode(
        self, sequences: list[str], max_length: int | None = None, limit: int | None = None
    ) -> TokenBatch:
        rows = [self.pieces(s.upper()) for s in sequences]
        return assemble(
            rows,
            [self.cls_token_id],
            [self.sep_token_id],
            self.pad_token_id,
            max_length,
            limit,
            f"DNABERT ({self.k}-mers)",
        )


class DnaBertAdapter(HFMaskedLMAdapter):
    """DNABERT behind the adapter interface: BERT sites (see :class:`HFMaskedLMAdapter`), k-mer
    tokens."""

    family = "dnabert"
    kind = "dna"

    @property
    def max_tokens(self) -> int:
        return int(self.model.config.max_position_embeddings)

    def tokenize(self, sequences: list[str], max_length: int | None = None) -> TokenBatch:
        return self.tokenizer.encode(list(sequences), max_length, self.max_tokens)


def load_dnabert(path: str | os.PathLike, device=None) -> DnaBertAdapter:
    """DNABERT from a local directory: ``config.json``, ``vocab.txt`` and the weights."""
    from transformers import BertConfig, BertForMaskedLM

    path = Path(path)
    raw = read_config(path)
    tok = KmerTokenizer.from_file(path / "vocab.txt")
    if raw.get("model_type", "bert") != "bert":
        raise SaeflowError(
            f"{path}/config.json: model_type {raw.get('model_type')!r}, DNABERT is a 'bert' model"
        )
    config = BertConfig.from_pretrained(path, local_files_only=True)
    if config.vocab_size < len(tok):
        raise SaeflowError(
            f"{path}: vocab.txt has {len(tok)} tokens ({tok.k}-mers), config.json vocab_size is "
            "only "
            f"{config.vocab_size}: the vocabulary does not belong to this model"
        )
    model = load_checked(BertForMaskedLM, path, config, f"DNABERT-{tok.k}")
    return DnaBertAdapter(model, tok, device)


def is_dnabert(path: Path) -> bool:
    """``config.json`` and a ``vocab.txt`` that starts ``[PAD] [UNK] [CLS] [SEP] [MASK]``."""
    return (path / "config.json").is_file() and vocab_head(path / "vocab.txt", 5) == list(SPECIALS)


register(Family("dnabert", detect=is_dnabert, load=load_dnabert, vocab=vocab_txt_ids, priority=50))

"""Nucleotide Transformer (InstaDeep; Dalla-Torre et al. 2024): ESM-style encoder over 6-mers.

Model. The v2 checkpoints (``nucleotide-transformer-v2-*-multi-species``) need remote code for a
SwiGLU feed-forward without biases that transformers' built-in ESM lacks; saeflow implements it in
:mod:`saeflow.models.ntv2_modeling` (:class:`~saeflow.models.ntv2_modeling.NTv2ForMaskedLM`) so
that no remote code runs and the published state-dict keys load unchanged. A directory is treated
as v2 when its ``config.json`` has ``add_bias_fnn`` (the v2 ``esm_config.EsmConfig`` field) or an
``auto_map`` into ``modeling_esm``; otherwise (the v1 checkpoints, e.g. ``-500m-human-ref``,
``-2.5b-multi-species``, which are plain ESM with absolute positions) transformers'
``EsmForMaskedLM`` is used. Missing or mis-shaped weights are an error, never a random init.

Tokenizer (:class:`NTTokenizer`, built from the checkpoint's ``vocab.txt``: ``<unk> <pad> <mask>
<cls> <eos> <bos>``, the 4096 6-mers, then ``A T C G N``). The rule is the one of InstaDeep's
``NucleotidesKmersTokenizer`` (nucleotide_transformer/tokenizers.py): split the sequence at every
``N``; cut each N-free stretch into non-overlapping 6-mers from its left end, and tokenize the
leftover (< 6) bases at its right end one by one; each ``N`` is its own token. The Hugging Face
``EsmTokenizer`` of the checkpoints gives the same tokens (greedy longest match, left to right;
tests/models/test_adapters_hf.py checks the two agree).
Offsets are exact by construction: a 6-mer covers ``[i, i + 6)``, a single base ``[i, i + 1)``.
Letters other than ACGTN are treated like N (a single token, ``<unk>`` if not in the vocabulary).
A ``<cls>`` token comes first; there is no end token: the released ``special_tokens_map.json``
names no ``eos_token``, so ``EsmTokenizer`` adds none (251 bases -> 41 6-mers + 5 bases + ``<cls>``
= 47 tokens with the real tokenizer).

Length: at most ``max_position_embeddings`` tokens (v1, absolute positions: minus ``pad_token_id +
1``, where ESM starts numbering), or ``model_max_length`` from ``tokenizer_config.json`` when
that is smaller; longer sequences raise unless ``max_length`` asks for truncation.
"""

from __future__ import annotations

import json
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

SPECIALS = ("<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>")


class NTTokenizer(VocabTokenizer):
    """Nucleotide Transformer's non-overlapping k-mer tokenizer (see the module docstring)."""

    unk_token, pad_token, mask_token, cls_token = SPECIALS[:4]

    def __init__(self, tokens: list[str], path):
        super().__init__(tokens, path)
        self.k = kmer_length(self.tokens, set(SPECIALS), self.path)
        missing = [b for b in "ACGTN" if b not in self.vocab]
        if missing:
            raise SaeflowError(
                f"{self.path}: no single-nucleotide token(s) {missing} in the vocabulary"
            )

    @classmethod
    def from_file(cls, path) -> "NTTokenizer":
        return cls(read_vocab_txt(path), path)

    def pieces(self, seq: str) -> list[tuple[int, int, int]]:
        k, vocab, unk = self.k, self.vocab, self.unk_token_id
        out: list[tuple[int, int, int]] = []
        i, n = 0, len(seq)
        while i < n:
            j = i
            while j < n and seq[j] in "ACGT":  # the N-free (ACGT-only) stretch [i, j)
                j += 1
            m = (j - i) // k * k
            out += [(vocab.get(seq[p : p + k], unk), p, p + k) for p in range(i, i + m, k)]
            out += [(vocab[seq[p]], p, p + 1) for p in range(i + m, j)]
            if j < n:  # N (or another letter) on its own
                out.append((vocab.get(seq[j], unk), j, j + 1))
            i = j + 1
        return out

    def encode(
        self, sequences: list[str], max_length: int | None = None, limit: int | None = None
    ) -> TokenBatch:
        rows = [self.pieces(s.upper()) for s in sequences]
        return assemble(
            rows,
            [self.cls_token_id],
            [],
            self.pad_token_id,
            max_length,
            limit,
            f"Nucleotide Transformer ({self.k}-mers)",
        )


class NucleotideTransformerAdapter(HFMaskedLMAdapter):
    """NT behind the adapter interface: ESM sites (see :class:`HFMaskedLMAdapter`), 6-mer tokens.

    Residual layer ``n_layers`` is the output of the final layer norm (``emb_layer_norm_after``),
    as ``hidden_states[-1]`` reports it; the MLP activation is the SwiGLU product (v2).
    """

    family = "nucleotide_transformer"
    kind = "dna"
    max_tokens: int | None = None

    def tokenize(self, sequences: list[str], max_length: int | None = None) -> TokenBatch:
        return self.tokenizer.encode(list(sequences), max_length, self.max_tokens)


def is_v2(raw_config: dict) -> bool:
    """v2 checkpoints carry ``add_bias_fnn`` or point their ``auto_map`` at the remote
    ``modeling_esm``."""
    auto_map = raw_config.get("auto_map") or {}
    return "add_bias_fnn" in raw_config or any("modeling_esm" in str(v) for v in auto_map.values())


def _model_max_length(path: Path) -> int | None:
    f = path / "tokenizer_config.json"
    if not f.is_file():
        return None
    try:
        n = json.loads(f.read_text()).get("model_max_length")
    except json.JSONDecodeError as e:
        raise SaeflowError(f"{f}: not valid JSON ({e})") from None
    # HF writes 1e30 for "unset"
    return int(n) if isinstance(n, (int, float)) and 0 < n < 1e9 else None


def load_nucleotide_transformer(
    path: str | os.PathLike, device=None
) -> NucleotideTransformerAdapter:
    """A Nucleotide Transformer (v2, or v1) from a local directory: ``config.json``, ``vocab.txt``,
    weights."""
    from transformers import EsmConfig, EsmForMaskedLM

    path = Path(path)
    raw = read_config(path)
    tok = NTTokenizer.from_file(path / "vocab.txt")
    if raw.get("model_type", "esm") != "esm":
        raise SaeflowError(
            f"{path}/config.json: model_type {raw.get('model_type')!r}, "
            "Nucleotide Transformer is an 'esm' model"
        )
    config = EsmConfig.from_pretrained(path, local_files_only=True)
    if config.vocab_size < len(tok):
        raise SaeflowError(
            f"{path}: vocab.txt has {len(tok)} tokens, config.json vocab_size is only "
            f"{config.vocab_size}: the vocabulary does not belong to this model"
        )
    for key, want in (("pad_token_id", tok.pad_token_id), ("mask_token_id", tok.mask_token_id)):
        if getattr(config, key, None) is not None and getattr(config, key) != want:
            raise SaeflowError(
                f"{path}: config.json {key} is {getattr(config, key)}, vocab.txt puts it at {want}"
            )
    if is_v2(raw):
        from saeflow.models.ntv2_modeling import NTv2ForMaskedLM

        model = load_checked(NTv2ForMaskedLM, path, config, "Nucleotide Transformer v2")
    else:
        model = load_checked(EsmForMaskedLM, path, config, "Nucleotide Transformer (v1, plain ESM)")
    ad = NucleotideTransformerAdapter(model, tok, device)
    n_pos = int(config.max_position_embeddings)
    if getattr(config, "position_embedding_type", "absolute") == "absolute":
        # ESM numbers absolute positions from pad_token_id + 1
        n_pos -= int(config.pad_token_id) + 1
    limits = [n_pos, _model_max_length(path)]
    ad.max_tokens = min(n for n in limits if n)
    return ad


def is_nucleotide_transformer(path: Path) -> bool:
    """``config.json`` and a ``vocab.txt`` that starts ``<unk> <pad> <mask> <cls>``."""
    return (path / "config.json").is_file() and vocab_head(path / "vocab.txt", 4) == list(
        SPECIALS[:4]
    )


register(
    Family(
        "nucleotide_transformer",
        detect=is_nucleotide_transformer,
        load=load_nucleotide_transformer,
        vocab=vocab_txt_ids,
        priority=60,
    )
)

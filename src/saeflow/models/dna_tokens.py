"""Shared pieces of the DNA tokenizers that saeflow implements itself (DNABERT, Nucleotide
Transformer).

Both families ship a ``vocab.txt`` but no fast tokenizer that reports token -> base offsets
(DNABERT's ``tokenizer_config.json`` even names a custom ``DNATokenizer`` class that
``AutoTokenizer`` cannot load). saeflow therefore splits sequences itself, from ``vocab.txt``, and
knows each token's span by construction. A family's tokenizer only says how one sequence becomes
``(token id, start, end)`` pieces; :func:`assemble` adds the family's special tokens, truncates,
pads and builds the
:class:`~saeflow.models.base.TokenBatch`.

Conventions (the same as the toy model's fast tokenizer):

* sequences are upper-cased first; offsets index the upper-cased string, so ``seq[start:end]`` is
  the token's text for k-mer and single-base tokens;
* special and padding tokens have offsets ``(0, 0)`` and ``special == True``; ``[UNK]`` tokens that
  stand for real bases (a k-mer containing N) keep their span and are *not* special;
* padding is on the right; ``attention_mask`` is 1 on real tokens (specials included).

Length: ``max_length`` (tokens, specials included) truncates the content, keeping the specials, as
Hugging Face truncation does. Without it, a sequence longer than the model can take raises a
:class:`~saeflow.utils.SaeflowError` instead of being cut silently (absolute position embeddings
would fail with an index error deep inside the model, and silently dropped bases would go unnoticed
in the activation store).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from saeflow.models.base import TokenBatch
from saeflow.utils import SaeflowError


def read_vocab_txt(path: str | os.PathLike) -> list[str]:
    """Tokens of a ``vocab.txt`` (one per line, id = line number); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise SaeflowError(f"{path}: no such file (the model directory must contain its vocab.txt)")
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    tokens = [t.strip() for t in lines]
    if not tokens:
        raise SaeflowError(f"{path}: empty vocabulary")
    empty = [i for i, t in enumerate(tokens) if not t]
    if empty:
        raise SaeflowError(f"{path}: empty token on line(s) {[i + 1 for i in empty[:5]]}")
    seen: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t in seen:
            raise SaeflowError(
                f"{path}: token {t!r} appears twice (lines {seen[t] + 1} and {i + 1})"
            )
        seen[t] = i
    return tokens


def vocab_head(path: str | os.PathLike, n: int = 8) -> list[str]:
    """The first ``n`` tokens of a ``vocab.txt`` ([] when unreadable): cheap family detection."""
    try:
        with open(path) as fh:
            return [line.strip() for _, line in zip(range(n), fh)]
    except OSError:
        return []


def vocab_txt_ids(model_dir: Path) -> dict[int, str]:
    """id -> token of a model directory's ``vocab.txt`` (id = line number)."""
    return dict(enumerate(read_vocab_txt(Path(model_dir) / "vocab.txt")))


def kmer_length(tokens: list[str], specials: set[str], path, alphabet: str = "ACGT") -> int:
    """The k of the k-mer tokens of a vocabulary: the length of its longest all-``alphabet`` tokens.

    Raises if there are none, or if not all ``4**k`` k-mers are present (a truncated or foreign
    vocabulary would silently map real k-mers to ``[UNK]``).
    """
    kmers = [t for t in tokens if t not in specials and set(t) <= set(alphabet)]
    if not kmers:
        raise SaeflowError(f"{path}: no k-mer tokens (strings over {alphabet}) in the vocabulary")
    k = max(len(t) for t in kmers)
    n = sum(len(t) == k for t in kmers)
    if n != len(alphabet) ** k:
        raise SaeflowError(
            f"{path}: {n} distinct {k}-mers, a {k}-mer vocabulary has {len(alphabet) ** k}"
        )
    return k


def assemble(
    rows: list[list[tuple[int, int, int]]],
    prefix: list[int],
    suffix: list[int],
    pad_id: int,
    max_length: int | None,
    limit: int | None,
    what: str,
) -> TokenBatch:
    """A padded :class:`TokenBatch` from per-sequence content pieces ``(id, start, end)``.

    ``prefix``/``suffix`` are the special token ids around the content; ``limit`` is the most tokens
    the model takes (None = no limit); ``what`` names the model in errors.
    """
    import torch

    n_special = len(prefix) + len(suffix)
    if max_length is not None:
        if max_length <= n_special:
            raise SaeflowError(
                f"max_length={max_length}: {what} needs {n_special} special tokens, "
                "so no room is left for the sequence"
            )
        if limit is not None and max_length > limit:
            raise SaeflowError(
                f"max_length={max_length} exceeds what {what} takes ({limit} tokens)"
            )
        keep = max_length - n_special
        rows = [r[:keep] for r in rows]
    elif limit is not None:
        for i, r in enumerate(rows):
            if len(r) + n_special > limit:
                raise SaeflowError(
                    f"sequence {i} of the batch is {len(r) + n_special} tokens long, {what} takes "
                    "at "
                    f"most {limit}: use shorter sequences or pass max_length to truncate"
                )
    T = max(len(r) for r in rows) + n_special if rows else n_special
    B = len(rows)
    ids = np.full((B, T), pad_id, dtype=np.int64)
    mask = np.zeros((B, T), dtype=np.int64)
    offsets = np.zeros((B, T, 2), dtype=np.int64)
    special = np.ones((B, T), dtype=bool)
    for b, r in enumerate(rows):
        n = len(r) + n_special
        ids[b, : len(prefix)] = prefix
        if r:
            arr = np.asarray(r, dtype=np.int64).reshape(-1, 3)
            sl = slice(len(prefix), len(prefix) + len(r))
            ids[b, sl] = arr[:, 0]
            offsets[b, sl] = arr[:, 1:]
            special[b, sl] = False
        ids[b, len(prefix) + len(r) : n] = suffix
        mask[b, :n] = 1
    return TokenBatch(torch.from_numpy(ids), torch.from_numpy(mask), offsets, special)


class VocabTokenizer:
    """Base of the saeflow DNA tokenizers: a ``vocab.txt`` vocabulary plus ``pieces(seq)``.

    Exposes what the rest of saeflow asks of a tokenizer: ``mask_token_id``, ``pad_token_id``,
    ``get_vocab()``, ``convert_ids_to_tokens``, ``len()``.
    """

    pad_token = unk_token = mask_token = cls_token = ""

    def __init__(self, tokens: list[str], path):
        self.path = Path(path)
        self.tokens = list(tokens)
        self.vocab = {t: i for i, t in enumerate(self.tokens)}
        for role in ("pad_token", "unk_token", "mask_token", "cls_token"):
            tok = getattr(self, role)
            if tok not in self.vocab:
                raise SaeflowError(f"{self.path}: no {tok!r} token ({role}) in the vocabulary")

    @property
    def pad_token_id(self) -> int:
        return self.vocab[self.pad_token]

    @property
    def unk_token_id(self) -> int:
        return self.vocab[self.unk_token]

    @property
    def mask_token_id(self) -> int:
        return self.vocab[self.mask_token]

    @property
    def cls_token_id(self) -> int:
        return self.vocab[self.cls_token]

    def __len__(self) -> int:
        return len(self.tokens)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.tokens[int(i)] for i in ids]

    def pieces(self, seq: str) -> list[tuple[int, int, int]]:
        """Content tokens of one (upper-cased) sequence: ``(id, start, end)``."""
        raise NotImplementedError

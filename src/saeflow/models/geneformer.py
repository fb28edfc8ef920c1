"""Geneformer V1 and V2 (Theodoris et al. 2023; ``ctheodoris/Geneformer``): BERT over
rank-value-encoded genes.

Model: a plain ``BertForMaskedLM`` (the released ``config.json`` / weights; no remote code).
``kind = "cells"``: inputs are a :class:`~saeflow.models.base.CellMatrix` of raw counts whose
``gene_ids`` are Ensembl ids; ``TokenBatch.genes[b, t]`` is the Ensembl id of each token (``""``
for special and padding tokens) and offsets are all ``(0, 0)``.

Tokenization (:class:`GeneformerTokenizer`) follows ``geneformer/tokenizer.py``
(``TranscriptomeTokenizer.tokenize_anndata`` and ``create_dataset``):

1. per cell, divide each gene's count by the cell's total count (over *all* genes of the matrix,
   Geneformer's ``n_counts``) and multiply by ``target_sum = 10_000``;
2. divide by the gene's non-zero median over the pretraining corpus (the gene median dictionary;
   the released pickles hold plain numbers -- the corpus medians were estimated with t-digests when
   the dictionary was built, but tokenizing only reads the stored values);
3. map each column's id through Geneformer's Ensembl mapping dictionary
   (``ensembl_mapping_dict*.pkl`` beside the token dictionary; its entries whose target is not a
   token are ignored, as Geneformer filters them; without the file, the identity on the token
   dictionary, as Geneformer's ``gene_mapping_file=None``, keyed by the upper-cased token so that
   a vocabulary of mixed-case symbols survives the lookup), upper-casing the id first; columns
   that map to nothing, or to a gene without a median, are dropped. Columns are summed per mapped
   id only when the collapse runs, and Geneformer runs it only when several *distinct* ids of the
   matrix map to one gene (``sum_ensembl_ids``: ``len(set(genes_in_map_dict)) !=
   len(set(vals_from_map_dict))``); otherwise every column stays its own token, so an id present
   in two columns gives the cell two tokens of that gene. A versioned id (``ENSG... .7``) is not a
   key of the dictionaries and is dropped.
4. rank the genes with non-zero value by descending normalised value (computed in float64; ties:
   input column order, where Geneformer's unstable ``np.argsort`` leaves them unspecified) -> their
   token ids;
5. truncate to the model input size: V1 (Genecorpus-30M series) 2048 tokens, no special tokens;
   V2 (Genecorpus-104M series) 4096 tokens including ``<cls>`` first and ``<eos>`` last (the
   content is cut to 4094). ``max_length`` lowers the limit; the limit never exceeds the model's
   ``max_position_embeddings``.

Deviations from Geneformer, each off by default (``load_geneformer(..., **options)``; in the
workflow ``models.<name>.geneformer``):

* ``strip_versions``: match ``ENSG00000123456.7`` as ``ENSG00000123456`` instead of dropping it
  (the workflow's dataset preparation already strips versions,
  ``datasets.<name>.strip_gene_versions``, so this matters for CellMatrix inputs built by hand);
* ``sum_repeated_ids``: sum the columns of an id that appears more than once even when Geneformer
  would not collapse (one token per gene, saeflow's behaviour before 2026-12);
* ``collapse_gene_ids=False`` (Geneformer's own switch): no mapping; ids are used as given and
  an id of the token dictionary appearing twice is an error, as in Geneformer;
* ``gene_mapping``: ``"auto"`` (the file beside the token dictionary, else the identity),
  ``"none"`` (the identity), or a path to a mapping pickle.

V1 or V2 is read from the token dictionary: V2 dictionaries contain ``<cls>`` and ``<eos>``
(``special_token=True`` in Geneformer), V1 dictionaries only ``<pad>`` and ``<mask>``.

Where the dictionaries come from: they are pickles of the Geneformer code repository, not of the
model directories (V2: ``geneformer/token_dictionary_gc104M.pkl`` and
``geneformer/gene_median_dictionary_gc104M.pkl``; V1: ``token_dictionary_gc30M.pkl`` /
``gene_median_dictionary_gc30M.pkl`` under ``geneformer/gene_dictionaries_30m/``, or the older
``token_dictionary.pkl`` / ``gene_median_dictionary.pkl``). saeflow finds them
(:func:`find_dictionaries`) in the model directory (copy them next to ``config.json``), in its
subdirectories (a snapshot of the whole repository), or in the ``geneformer/`` directory beside
it (the model is one of the repository's ``Geneformer-V*`` subfolders); when several token
dictionaries are found, the one with the model's ``vocab_size`` entries is used, and the median
dictionary beside it with the same suffix. Or pass explicit paths:
``load_geneformer(path, token_dictionary=..., gene_median=...)``. The token ids must fit the
model's ``vocab_size`` (a larger dictionary is refused). Pickles can run code when loaded: use the
files of the Geneformer repository.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from pathlib import Path

import numpy as np

from saeflow.models.base import CellMatrix, TokenBatch
from saeflow.models.hf import HFMaskedLMAdapter, load_checked, read_config
from saeflow.models.registry import Family, register
from saeflow.utils import ENSEMBL_VERSIONED, SaeflowError

log = logging.getLogger(__name__)

TARGET_SUM = 10_000
V1_INPUT_SIZE = 2048
V2_INPUT_SIZE = 4096


def _is_special(token) -> bool:
    return isinstance(token, str) and token.startswith("<") and token.endswith(">")


def _load_pickle(path: Path, what: str) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh)
    except FileNotFoundError:
        raise SaeflowError(f"{path}: no such file ({what})") from None
    except Exception as e:  # unpickling raises many kinds for foreign or truncated files
        raise SaeflowError(f"{path}: cannot read the {what} ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or not obj:
        raise SaeflowError(
            f"{path}: the {what} should be a non-empty dict, found {type(obj).__name__}"
        )
    return obj


def read_token_dictionary(path: str | os.PathLike) -> dict[str, int]:
    """Ensembl id (and special token) -> token id, from Geneformer's ``token_dictionary*.pkl``."""
    path = Path(path)
    raw = _load_pickle(path, "token dictionary")
    out = {}
    for k, v in raw.items():
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise SaeflowError(
                f"{path}: token dictionary value of {k!r} is {v!r}, expected an integer token id"
            )
        out[str(k)] = int(v)
    for tok in ("<pad>", "<mask>"):
        if tok not in out:
            raise SaeflowError(f"{path}: no {tok} token in the token dictionary")
    if len(set(out.values())) != len(out):
        raise SaeflowError(f"{path}: token ids are not unique")
    return out


def read_gene_medians(path: str | os.PathLike) -> dict[str, float]:
    """Ensembl id -> non-zero median expression, from
    Geneformer's ``gene_median_dictionary*.pkl``."""
    path = Path(path)
    raw = _load_pickle(path, "gene median dictionary")
    out = {}
    for k, v in raw.items():
        if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool):
            raise SaeflowError(
                f"{path}: median of {k!r} is a {type(v).__name__}, expected a number "
                "(the released dictionaries store plain non-zero medians)"
            )
        v = float(v)
        if not (math.isfinite(v) and v > 0):
            raise SaeflowError(f"{path}: median of {k!r} is {v}, expected a positive number")
        out[str(k)] = v
    return out


def read_gene_mapping(path: str | os.PathLike) -> dict[str, str]:
    """Gene id -> Ensembl id of a token, from Geneformer's ``ensembl_mapping_dict*.pkl`` (current
    ids map to themselves, retired ids and aliases to the gene they became)."""
    path = Path(path)
    raw = _load_pickle(path, "Ensembl mapping dictionary")
    out = {}
    for k, v in raw.items():
        if not isinstance(v, str):
            raise SaeflowError(
                f"{path}: Ensembl mapping dictionary value of {k!r} is {v!r}, expected an id string"
            )
        out[str(k)] = v
    return out


def find_gene_mapping(token_dictionary: Path) -> Path | None:
    """``ensembl_mapping_dict*.pkl`` beside the token dictionary, with its suffix (``_gc104M``,
    ``_gc30M``) or the only one there; None when there is none."""
    suffix = (
        token_dictionary.name[len("token_dictionary") :]
        if token_dictionary.name.startswith("token_dictionary")
        else ".pkl"
    )
    exact = token_dictionary.parent / f"ensembl_mapping_dict{suffix}"
    if exact.is_file():
        return exact
    near = sorted(token_dictionary.parent.glob("ensembl_mapping_dict*.pkl"))
    if len(near) > 1:
        raise SaeflowError(
            f"{token_dictionary.parent}: several Ensembl mapping dictionaries "
            f"{[n.name for n in near]} and none named {exact.name}; pass gene_mapping= (the "
            "workflow: models.<name>.geneformer.gene_mapping) with the one for this model"
        )
    return near[0] if near else None


def dictionary_candidates(path: str | os.PathLike) -> list[Path]:
    """``token_dictionary*.pkl`` files for the model in ``path``, from the first place that has any.

    Places, in order: the model directory itself; its subdirectories (a snapshot of the whole
    ``ctheodoris/Geneformer`` repository keeps them under ``geneformer/``); the ``geneformer/``
    Python package beside the model directory (the model is one of the repository's
    ``Geneformer-V*-*`` subfolders; a sibling directory merely named ``geneformer`` without
    ``__init__.py``, e.g. another model, is not searched).
    """
    path = Path(path)
    pattern = "token_dictionary*.pkl"
    places = [sorted(path.glob(pattern)), sorted(path.rglob(pattern))]
    # the repository's package, not a model named so
    if (path.parent / "geneformer" / "__init__.py").is_file():
        places.append(sorted((path.parent / "geneformer").rglob(pattern)))
    return next((hits for hits in places if hits), [])


def find_dictionaries(
    path: str | os.PathLike, token_dictionary=None, gene_median=None, vocab_size: int | None = None
) -> tuple[Path, Path]:
    """The token and gene-median dictionary files of the model in ``path`` (see
    :func:`dictionary_candidates`).

    Explicit paths win. When several token dictionaries are found, the one whose size equals the
    model's ``vocab_size`` is taken (V1: 25,426 tokens, V2: 20,275); the gene medians are the
    ``gene_median_dictionary*.pkl`` beside it with the same suffix (``_gc104M``, ``_gc30M``, none).
    """
    path = Path(path)
    if token_dictionary is not None:
        tok = Path(token_dictionary)
    else:
        hits = dictionary_candidates(path)
        if len(hits) > 1 and vocab_size is not None:
            hits = [h for h in hits if len(read_token_dictionary(h)) == vocab_size] or hits
        if not hits:
            raise SaeflowError(
                f"{path}: no token_dictionary*.pkl found; copy Geneformer's dictionaries into the "
                "model "
                "directory (V2: token_dictionary_gc104M.pkl, gene_median_dictionary_gc104M.pkl; "
                "V1: the gc30M files) or pass their paths to load_geneformer"
            )
        if len(hits) > 1:
            raise SaeflowError(
                f"{path}: several token dictionaries {[str(h) for h in hits]}; keep the one that "
                "belongs to this model, or pass its path to load_geneformer"
            )
        tok = hits[0]
    if gene_median is not None:
        return tok, Path(gene_median)
    suffix = (
        tok.name[len("token_dictionary") :] if tok.name.startswith("token_dictionary") else ".pkl"
    )
    med = tok.parent / f"gene_median_dictionary{suffix}"
    if not med.is_file():
        near = sorted(tok.parent.glob("gene_median_dictionary*.pkl"))
        if len(near) != 1:
            raise SaeflowError(
                f"{tok.parent}: no {med.name} beside {tok.name} "
                f"({'found ' + str([n.name for n in near]) if near else 'none there'}); "
                "pass gene_median= to load_geneformer"
            )
        med = near[0]
    return tok, med


class GeneformerTokenizer:
    """Rank-value encoding of cells (see the module docstring for the steps and decisions)."""

    def __init__(
        self,
        token_dict: dict[str, int],
        medians: dict[str, float],
        model_input_size: int,
        special_tokens: bool,
        source: str = "Geneformer",
        gene_mapping: dict[str, str] | None = None,
        collapse_gene_ids: bool = True,
        strip_versions: bool = False,
        sum_repeated_ids: bool = False,
    ):
        self.token_dict = dict(token_dict)
        self.special_tokens = bool(special_tokens)
        self.model_input_size = int(model_input_size)
        self.source = source
        self.pad_token_id = self.token_dict["<pad>"]
        self.mask_token_id = self.token_dict["<mask>"]
        self.cls_token_id = self.token_dict.get("<cls>") if special_tokens else None
        self.eos_token_id = self.token_dict.get("<eos>") if special_tokens else None
        if special_tokens and (self.cls_token_id is None or self.eos_token_id is None):
            raise SaeflowError(
                f"{source}: V2 tokenization needs <cls> and <eos> in the token dictionary"
            )
        self.genes = {
            g: i for g, i in self.token_dict.items() if not _is_special(g) and g in medians
        }
        if not self.genes:
            raise SaeflowError(
                f"{source}: no gene is in both the token dictionary and the median dictionary"
            )
        self.medians = {g: medians[g] for g in self.genes}
        self.id_to_token = {i: t for t, i in self.token_dict.items()}
        # Geneformer keeps the mapping entries whose target is a token. Without a file it maps
        # every token to itself; it looks ids up upper-cased, so the identity is keyed by the
        # upper-cased token here: the same for Ensembl ids (upper case), and a vocabulary of
        # symbols (the toy Geneformer's C1orf228) is not lost.
        if gene_mapping is None:
            mapping = {k.upper(): k for k in self.token_dict}
        else:
            mapping = gene_mapping
        self.gene_mapping = {k: v for k, v in mapping.items() if v in self.token_dict}
        self.collapse_gene_ids = bool(collapse_gene_ids)
        self.strip_versions = bool(strip_versions)
        self.sum_repeated_ids = bool(sum_repeated_ids)
        self._columns_cache: tuple | None = None

    @property
    def version(self) -> str:
        return "V2" if self.special_tokens else "V1"

    def __len__(self) -> int:
        return len(self.token_dict)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.token_dict)

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.id_to_token[int(i)] for i in ids]

    # --- rank-value encoding ------------------------------------------------------------------
    def _columns(self, gene_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(kept column indices, each one's output gene, output gene ids) for a gene id array:
        Geneformer's ``sum_ensembl_ids`` (see the module docstring). Output genes are summed over
        their columns; without a collapse every kept column is its own output gene, so an id may
        appear twice among the output gene ids.

        Cached for the last array seen (by identity): the batches of one CellMatrix share it.
        """
        cache = self._columns_cache
        if cache is not None and cache[0] is gene_ids:
            return cache[1]
        ids = [str(g) for g in gene_ids]
        if self.strip_versions:
            ids = [ENSEMBL_VERSIONED.sub(r"\1", g) for g in ids]
        if self.collapse_gene_ids:
            m = self.gene_mapping
            in_map = {g for g in ids if g in m}
            collapse = self.sum_repeated_ids or len(in_map) != len({m[g] for g in in_map})
            mapped = [m.get(g.upper()) for g in ids]
        else:
            collapse, mapped, first = False, ids, {}
            for j, g in enumerate(ids):
                if g in self.token_dict and first.setdefault(g, j) != j:
                    raise SaeflowError(
                        f"{self.source}: gene id {g!r} is in columns {first[g]} and {j}; with "
                        "collapse_gene_ids off, Geneformer refuses repeated ids ('data Ensembl "
                        "IDs non-unique'): turn it on, or make the ids unique"
                    )
        cols = [j for j, g in enumerate(mapped) if g in self.genes]
        if collapse:
            pos: dict[str, int] = {}
            which = [pos.setdefault(mapped[j], len(pos)) for j in cols]
            names = list(pos)
        else:
            which = list(range(len(cols)))
            names = [mapped[j] for j in cols]
        dropped_versions = sum(
            1 for g, t in zip(ids, mapped) if t not in self.genes and ENSEMBL_VERSIONED.match(g)
        )
        if dropped_versions:
            log.warning(
                "%s: %d of %d gene ids carry an Ensembl version (e.g. %s) and are dropped, as "
                "Geneformer drops them; strip the versions first (the workflow does at "
                "preparation: datasets.<name>.strip_gene_versions) or set strip_versions "
                "(models.<name>.geneformer.strip_versions)",
                self.source,
                dropped_versions,
                len(ids),
                next(g for g in ids if ENSEMBL_VERSIONED.match(g)),
            )
        aliases = sum(1 for j in cols if mapped[j] != ids[j])
        log.info(
            "%s: %d of %d columns kept as %d genes (%d mapped from another id%s)",
            self.source,
            len(cols),
            len(ids),
            len(set(names)),
            aliases,
            "; columns summed per gene" if collapse else "",
        )
        res = (
            np.asarray(cols, dtype=np.int64),
            np.asarray(which, dtype=np.int64),
            np.asarray(names, dtype=object),
        )
        self._columns_cache = (gene_ids, res)
        return res

    def rank_cells(self, cells: CellMatrix) -> list[np.ndarray]:
        """Full (untruncated) rank-value encoding of each cell, as arrays of Ensembl ids, highest
        first."""
        import scipy.sparse as sp

        if cells.gene_ids is None:
            raise SaeflowError(
                "Geneformer tokenizes cells by Ensembl gene id, but this CellMatrix has "
                "gene_ids=None (the dataset needs a gene id column)"
            )
        gene_ids = cells.gene_ids
        X = sp.csr_matrix(cells.X, dtype=np.float64)
        if X.shape[1] != len(gene_ids):
            raise SaeflowError(
                f"CellMatrix: {X.shape[1]} gene columns but {len(gene_ids)} gene ids"
            )
        if X.nnz and X.data.min() < 0:
            raise SaeflowError("CellMatrix: negative values; Geneformer needs raw counts")
        cols, which, uniq = self._columns(gene_ids)
        n_counts = np.asarray(X.sum(axis=1)).ravel()
        if not len(cols):
            log.warning(
                "%s: none of the %d genes is in the token dictionary; every cell is empty",
                self.source,
                len(gene_ids),
            )
            return [np.empty(0, dtype=object) for _ in range(X.shape[0])]
        # sum duplicated ids, then scale: counts / n_counts * 10,000 / median
        collapse = sp.csr_matrix(
            (np.ones(len(cols)), (np.arange(len(cols)), which)), shape=(len(cols), len(uniq))
        )
        with np.errstate(divide="ignore"):
            row_scale = np.where(n_counts > 0, TARGET_SUM / n_counts, 0.0)
        col_scale = 1.0 / np.array([self.medians[g] for g in uniq])
        Xn = sp.diags(row_scale) @ (X[:, cols] @ collapse) @ sp.diags(col_scale)
        Xn = sp.csr_matrix(Xn)
        Xn.sort_indices()
        out = []
        for r in range(Xn.shape[0]):
            lo, hi = Xn.indptr[r], Xn.indptr[r + 1]
            vals, idx = Xn.data[lo:hi], Xn.indices[lo:hi]
            pos = vals > 0
            vals, idx = vals[pos], idx[pos]
            out.append(uniq[idx[np.argsort(-vals, kind="stable")]])
        return out

    def encode(self, cells: CellMatrix, max_length: int | None = None) -> TokenBatch:
        import torch

        limit = (
            self.model_input_size
            if max_length is None
            else min(int(max_length), self.model_input_size)
        )
        n_special = 2 if self.special_tokens else 0
        if limit <= n_special:
            raise SaeflowError(
                f"max_length={max_length}: Geneformer {self.version} needs {n_special} special "
                "tokens, so no room is left for genes"
            )
        ranked = [r[: limit - n_special] for r in self.rank_cells(cells)]
        B = len(ranked)
        T = max([len(r) for r in ranked] + [0]) + n_special
        T = max(T, 1)
        ids = np.full((B, T), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((B, T), dtype=np.int64)
        genes = np.full((B, T), "", dtype=object)
        special = np.ones((B, T), dtype=bool)
        start = 1 if self.special_tokens else 0
        for b, r in enumerate(ranked):
            n = len(r)
            if self.special_tokens:
                ids[b, 0] = self.cls_token_id
                ids[b, n + 1] = self.eos_token_id
            if n:
                ids[b, start : start + n] = [self.genes[g] for g in r]
                genes[b, start : start + n] = r
                special[b, start : start + n] = False
            mask[b, : n + n_special] = 1
        return TokenBatch(
            torch.from_numpy(ids),
            torch.from_numpy(mask),
            np.zeros((B, T, 2), dtype=np.int64),
            special,
            genes=genes,
        )


class GeneformerAdapter(HFMaskedLMAdapter):
    """Geneformer behind the adapter interface: BERT sites (see :class:`HFMaskedLMAdapter`),
    rank-value tokens."""

    family = "geneformer"
    kind = "cells"

    def tokenize(self, cells: CellMatrix, max_length: int | None = None) -> TokenBatch:
        if not isinstance(cells, CellMatrix):
            raise SaeflowError(
                "Geneformer tokenizes a CellMatrix (cells x genes counts), got "
                f"{type(cells).__name__}"
            )
        return self.tokenizer.encode(cells, max_length)


def load_geneformer(
    path: str | os.PathLike,
    device=None,
    token_dictionary=None,
    gene_median=None,
    gene_mapping: str | os.PathLike = "auto",
    collapse_gene_ids: bool = True,
    strip_versions: bool = False,
    sum_repeated_ids: bool = False,
) -> GeneformerAdapter:
    """Geneformer V1 or V2 from a local directory (``config.json`` + weights) and its gene
    dictionaries.

    ``token_dictionary`` / ``gene_median``: explicit pickle paths; by default the one
    ``token_dictionary*.pkl`` and ``gene_median_dictionary*.pkl`` in the model directory.
    ``gene_mapping``: ``"auto"`` (the ``ensembl_mapping_dict*.pkl`` beside the token dictionary,
    else the identity), ``"none"`` or a path. ``collapse_gene_ids``, ``strip_versions``,
    ``sum_repeated_ids``: see the module docstring (the defaults are Geneformer's behaviour).
    """
    from transformers import BertConfig, BertForMaskedLM

    path = Path(path)
    raw = read_config(path)
    if raw.get("model_type", "bert") != "bert":
        raise SaeflowError(
            f"{path}/config.json: model_type {raw.get('model_type')!r}, Geneformer is a 'bert' "
            "model"
        )
    config = BertConfig.from_pretrained(path, local_files_only=True)
    tok_file, med_file = find_dictionaries(path, token_dictionary, gene_median, config.vocab_size)
    token_dict = read_token_dictionary(tok_file)
    medians = read_gene_medians(med_file)
    if str(gene_mapping) == "auto":
        map_file = find_gene_mapping(tok_file)
        if map_file is None:
            log.info("%s: no ensembl_mapping_dict*.pkl beside it; ids map to themselves", tok_file)
    else:
        map_file = None if str(gene_mapping) in ("none", "") else Path(gene_mapping)
    mapping = read_gene_mapping(map_file) if map_file is not None else None
    top = max(token_dict.values())
    if top >= config.vocab_size:
        raise SaeflowError(
            f"{tok_file}: token ids go up to {top}, the model in {path} has vocab_size "
            f"{config.vocab_size}: the dictionary does not belong to this model (V1 vs V2?)"
        )
    if config.pad_token_id is not None and config.pad_token_id != token_dict["<pad>"]:
        raise SaeflowError(
            f"{tok_file}: <pad> is token {token_dict['<pad>']}, {path}/config.json pad_token_id "
            f"is {config.pad_token_id}"
        )
    if len(token_dict) != config.vocab_size:
        log.warning(
            "%s: %d tokens, the model's vocab_size is %d (the released pairs match exactly)",
            tok_file,
            len(token_dict),
            config.vocab_size,
        )
    special = "<cls>" in token_dict and "<eos>" in token_dict
    size = min(V2_INPUT_SIZE if special else V1_INPUT_SIZE, int(config.max_position_embeddings))
    tok = GeneformerTokenizer(
        token_dict,
        medians,
        size,
        special,
        source=str(tok_file),
        gene_mapping=mapping,
        collapse_gene_ids=collapse_gene_ids,
        strip_versions=strip_versions,
        sum_repeated_ids=sum_repeated_ids,
    )
    model = load_checked(BertForMaskedLM, path, config, f"Geneformer {tok.version}")
    return GeneformerAdapter(model, tok, device)


def is_geneformer(path: Path) -> bool:
    """A BERT ``config.json`` with Geneformer's token dictionary near it
    (:func:`dictionary_candidates`)."""
    if not (path / "config.json").is_file():
        return False
    return read_config(path).get("model_type") in (None, "bert") and bool(
        dictionary_candidates(path)
    )


def geneformer_vocab(path: Path) -> dict[int, str]:
    """id -> token: the token dictionary inverted (Ensembl ids and the special tokens)."""
    tok_file, _ = find_dictionaries(path, vocab_size=read_config(path).get("vocab_size"))
    return {i: t for t, i in read_token_dictionary(tok_file).items()}


register(
    Family(
        "geneformer",
        detect=is_geneformer,
        load=load_geneformer,
        vocab=geneformer_vocab,
        priority=20,
    )
)

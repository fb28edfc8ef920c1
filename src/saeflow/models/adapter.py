"""Load a model directory behind one interface: the family registry and the Hugging Face adapters.

The toy model the workflow trains and released checkpoints (DNABERT, Nucleotide Transformer v2,
Geneformer, DNABERT-2, scGPT; snapshots under ``resources/models/``) go through the same
:func:`load_model`, which picks the family's loader from :data:`LOADERS` (``family=`` or
:func:`detect_family`). Family-specific details live in each family's module
(:mod:`saeflow.models.dnabert`, :mod:`~saeflow.models.nucleotide_transformer`,
:mod:`~saeflow.models.geneformer`, ...), imported only when that family is loaded. The interface
(tokenise, run with captures and patches) is :mod:`saeflow.models.base`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from saeflow.models.base import HookedAdapter, LayerSites, Site, TokenBatch
from saeflow.utils import SaeflowError

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
            raise SaeflowError(
                f"{type(self.model).__name__}: {len(blocks)} blocks, config says {self.n_layers}"
            )
        return blocks

    def resid_site(self, layer: int) -> Site:
        enc = self.model.base_model.encoder
        if layer == self.n_layers and getattr(enc, "emb_layer_norm_after", None) is not None:
            return Site(enc.emb_layer_norm_after, "output")
        return super().resid_site(layer)

    def layer_sites(self, layer: int) -> LayerSites:
        block = self.blocks()[layer - 1]
        att = block.attention.self
        return LayerSites(
            q=Site(att.query),
            k=Site(att.key),
            v=Site(att.value),
            head_out=Site(att, "output", 0),
            mlp=Site(block.intermediate),
            attn=None,
        )

    def head_weights(self, layer: int) -> dict:
        import torch

        block = self.blocks()[layer - 1]
        att, H, dh, d = block.attention.self, self.n_heads, self.d_head, self.d_model
        with torch.no_grad():
            w = {
                k: getattr(att, m).weight.detach().T.reshape(d, H, dh).permute(1, 0, 2).clone()
                for k, m in (("W_Q", "query"), ("W_K", "key"), ("W_V", "value"))
            }
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
        special = enc["special_tokens_mask"].numpy().astype(bool) | (
            enc["attention_mask"].numpy() == 0
        )
        return TokenBatch(
            enc["input_ids"], enc["attention_mask"], enc["offset_mapping"].numpy(), special
        )


def read_config(path: str | os.PathLike) -> dict:
    """``config.json`` of a model directory as a dict; errors name the file."""
    path = Path(path)
    cfg = path / "config.json"
    if not path.is_dir() or not cfg.is_file():
        raise SaeflowError(
            f"{path}: not a model directory (no config.json); expected a save_pretrained layout"
        )
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise SaeflowError(f"{cfg}: not valid JSON ({e})") from None


def load_checked(model_cls, path: str | os.PathLike, config, what: str):
    """``model_cls.from_pretrained`` (local files only, float32) that refuses missing or mis-shaped weights.

    A weight missing from a checkpoint would otherwise be randomly initialised with only a log
    line; for SAE features that is silent garbage, so here it is an error naming the keys.
    Checkpoint tensors the model does not use (e.g. a BERT pooler under a masked-LM head) are
    logged and ignored.
    """
    import torch
    import transformers

    # float32 whatever the checkpoint's storage dtype ("dtype" replaced "torch_dtype" in transformers 4.56)
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kw = {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": torch.float32}
    try:
        model, info = model_cls.from_pretrained(
            path, config=config, local_files_only=True, output_loading_info=True, **dtype_kw
        )
    except (OSError, RuntimeError, ValueError) as e:
        raise SaeflowError(
            f"{path}: cannot load the {what} weights ({type(e).__name__}: {e})"
        ) from None
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(m) for m in (info.get("mismatched_keys") or []))
    if missing or mismatched:
        raise SaeflowError(
            f"{path}: the checkpoint does not fit {what} ({type(model).__name__}): "
            f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}, "
            f"mis-shaped {mismatched[:6]}{' ...' if len(mismatched) > 6 else ''}"
        )
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        log.info(
            "%s: %d checkpoint tensors unused by %s (e.g. %s)",
            path,
            len(unexpected),
            what,
            unexpected[:3],
        )
    return model


def _load_toy(path: str | os.PathLike, device=None) -> DnaAdapter:
    """The workflow's toy model (and any DNA masked LM saved with a fast tokenizer): ``save_pretrained`` layout."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "config.json")):
        raise SaeflowError(
            f"{path}: not a model directory (no config.json); expected a save_pretrained layout"
        )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForMaskedLM.from_pretrained(path, local_files_only=True)
    if not getattr(tokenizer, "is_fast", False):
        raise SaeflowError(
            f"{path}: tokenizer is not a fast tokenizer; token->base offsets need one"
        )
    return DnaAdapter(model, tokenizer, device)


# --- the family registry ------------------------------------------------------------------------
#: family -> (module, loader function); modules are imported only when their family is loaded.
LOADERS: dict[str, tuple[str, str]] = {
    "toy": (__name__, "_load_toy"),
    "dnabert": ("saeflow.models.dnabert", "load_dnabert"),
    "nucleotide_transformer": (
        "saeflow.models.nucleotide_transformer",
        "load_nucleotide_transformer",
    ),
    "geneformer": ("saeflow.models.geneformer", "load_geneformer"),
    "dnabert2": ("saeflow.models.dnabert2", "load_dnabert2"),
    "scgpt": ("saeflow.models.scgpt", "load_scgpt"),
}
FAMILIES = tuple(LOADERS)


def _vocab_head(path: Path, n: int = 8) -> list[str]:
    try:
        with open(path) as fh:
            return [line.strip() for _, line in zip(range(n), fh)]
    except OSError:
        return []


def detect_family(path: str | os.PathLike) -> str:
    """The model family of a local model directory, from files only (no weights are read).

    Rules, first match wins (each is a layout only that family ships):

    * no ``config.json`` but ``args.json`` + ``vocab.json`` + a ``*.pt`` file: ``scgpt`` (scGPT's
      released checkpoint layout);
    * a BERT ``config.json`` and Geneformer's ``token_dictionary*.pkl`` in the directory, below it,
      or in a ``geneformer/`` directory beside it: ``geneformer`` (see
      :func:`saeflow.models.geneformer.find_dictionaries`);
    * ``config.json`` with ``alibi_starting_size`` or an ``auto_map`` into ``bert_layers``: ``dnabert2``;
    * ``tokenizer.json`` (a fast tokenizer with offsets, which neither DNABERT nor NT ships): ``toy``;
    * ``vocab.txt`` starting ``[PAD] [UNK] [CLS] [SEP] [MASK]``: ``dnabert``; starting with
      ``<unk> <pad> <mask> <cls>``: ``nucleotide_transformer``.

    Anything else raises a :class:`SaeflowError` that lists the families to pass as ``family=``.
    """
    path = Path(path)
    if not path.is_dir():
        raise SaeflowError(f"{path}: not a model directory (no such directory)")
    if not (path / "config.json").is_file():
        if (
            (path / "args.json").is_file()
            and (path / "vocab.json").is_file()
            and any(path.glob("*.pt"))
        ):
            return "scgpt"
        raise SaeflowError(
            f"{path}: not a model directory (no config.json); expected a save_pretrained layout, "
            "or an scGPT checkpoint (args.json, vocab.json, *.pt)"
        )
    cfg = read_config(path)
    if cfg.get("model_type") in (None, "bert"):
        from saeflow.models.geneformer import dictionary_candidates

        if dictionary_candidates(path):
            return "geneformer"
    auto_map = cfg.get("auto_map") or {}
    if "alibi_starting_size" in cfg or any("bert_layers" in str(v) for v in auto_map.values()):
        return "dnabert2"
    if (path / "tokenizer.json").is_file():
        return "toy"
    head = _vocab_head(path / "vocab.txt")
    if head[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]:
        return "dnabert"
    if head[:4] == ["<unk>", "<pad>", "<mask>", "<cls>"]:
        return "nucleotide_transformer"
    raise SaeflowError(
        f"{path}: cannot tell the model family from its files (config.json model_type "
        f"{cfg.get('model_type')!r}); pass family= one of {', '.join(FAMILIES)}"
    )


def load_model(path: str | os.PathLike, device=None, family: str | None = None):
    """Load a local model directory as a :class:`~saeflow.models.base.ModelAdapter` (no network).

    ``family`` is one of :data:`FAMILIES`; None detects it from the directory's files
    (:func:`detect_family`). ``"toy"`` is the workflow's own model (``save_pretrained`` with a
    fast tokenizer); the others are the released checkpoints' layouts, documented in each
    family's module.
    """
    import importlib

    if family is None:
        family = detect_family(path)
    if family not in LOADERS:
        raise SaeflowError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    module, fn = LOADERS[family]
    try:
        loader = getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError) as e:
        raise SaeflowError(
            f"model family {family!r}: its loader {module}.{fn} is not available "
            f"({type(e).__name__}: {e})"
        ) from None
    return loader(path, device=device)


def load_vocab(path: str | os.PathLike, family: str | None = None) -> dict[int, str]:
    """id -> token string of a model directory's vocabulary (cheap: no model weights).

    ``family`` is the one the model is loaded with (None: :func:`detect_family`), so the
    vocabulary is always the one its adapter tokenizes with. DNABERT and Nucleotide Transformer:
    the lines of ``vocab.txt``; DNABERT-2: ``tokenizer.json`` (read as its adapter reads it);
    Geneformer: the token dictionary inverted (tokens are Ensembl ids and its special tokens);
    scGPT: ``vocab.json`` inverted (gene symbols, specials appended as the adapter does). Every
    other directory (the toy model, or one whose family cannot be told) goes through
    ``AutoTokenizer``.
    """
    fam = family
    if fam is None:
        try:
            fam = detect_family(path)
        except SaeflowError:
            fam = None
    if fam in ("dnabert", "nucleotide_transformer"):
        from saeflow.models.dna_tokens import read_vocab_txt

        return dict(enumerate(read_vocab_txt(Path(path) / "vocab.txt")))
    if fam == "geneformer":
        from saeflow.models.geneformer import find_dictionaries, read_token_dictionary

        tok_file, _ = find_dictionaries(path, vocab_size=read_config(path).get("vocab_size"))
        return {i: t for t, i in read_token_dictionary(tok_file).items()}
    if fam == "dnabert2":
        from saeflow.models.dnabert2 import load_dnabert2_tokenizer

        tok = load_dnabert2_tokenizer(Path(path) / "tokenizer.json")
        return {i: t for t, i in tok.get_vocab().items()}
    if fam == "scgpt":
        from saeflow.models.scgpt import read_vocab

        return {i: t for t, i in read_vocab(Path(path) / "vocab.json").items()}
    if fam is not None and fam not in LOADERS:
        raise SaeflowError(f"unknown model family {fam!r}; known: {', '.join(FAMILIES)}")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return {i: t for t, i in tok.get_vocab().items()}

"""Shared Hugging Face pieces: BERT/ESM adapters, config and checked weight loading; the toy family.

The families whose checkpoints are Hugging Face masked LMs (:mod:`saeflow.models.dnabert`,
:mod:`~saeflow.models.nucleotide_transformer`, :mod:`~saeflow.models.geneformer`) build on
:class:`HFMaskedLMAdapter`, :func:`read_config` and :func:`load_checked`. The ``toy`` family (the
workflow's own model, and any DNA masked LM saved with a fast tokenizer) is registered here: it is
nothing but these pieces. This module imports no family; the registry is
:mod:`saeflow.models.registry`, the interface :mod:`saeflow.models.base`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from saeflow.models.base import HookedAdapter, LayerSites, Site, TokenBatch
from saeflow.models.registry import Family, detect_family, register
from saeflow.utils import SaeflowError

log = logging.getLogger(__name__)


class HFMaskedLMAdapter(HookedAdapter):
    """Hugging Face BERT-style masked LMs (``BertForMaskedLM``, ``EsmForMaskedLM``): sites by module
    name.

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
    """``model_cls.from_pretrained`` (local files only, float32) that refuses missing or mis-shaped
    weights.

    A weight missing from a checkpoint would otherwise be randomly initialised with only a log
    line; for SAE features that is silent garbage, so here it is an error naming the keys.
    Checkpoint tensors the model does not use (e.g. a BERT pooler under a masked-LM head) are
    logged and ignored.
    """
    import torch
    import transformers

    # float32 whatever the checkpoint's storage dtype ("dtype" replaced "torch_dtype" in
    # transformers 4.56)
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


# --- the toy family ------------------------------------------------------------------------
def is_toy(path: Path) -> bool:
    """A ``save_pretrained`` directory with a fast tokenizer's ``tokenizer.json``."""
    return (path / "config.json").is_file() and (path / "tokenizer.json").is_file()


def load_toy(path: str | os.PathLike, device=None) -> DnaAdapter:
    """The toy model (or any DNA masked LM saved with a fast tokenizer), ``save_pretrained`` layout.

    A directory without ``tokenizer.json`` is refused (naming the family its files look like):
    another family's checkpoint would otherwise load with a tokenizer that is not its own.
    """
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    read_config(path)
    if not (Path(path) / "tokenizer.json").is_file():
        try:
            fam = detect_family(path)
            hint = f"; its files are a {fam!r} checkpoint: load it as family {fam!r} (or 'auto')"
        except SaeflowError:
            hint = ""
        raise SaeflowError(
            f"{path}: not a toy model (no tokenizer.json: the fast tokenizer whose token->base "
            f"offsets it needs){hint}"
        )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForMaskedLM.from_pretrained(path, local_files_only=True)
    if not getattr(tokenizer, "is_fast", False):
        raise SaeflowError(
            f"{path}: tokenizer is not a fast tokenizer; token->base offsets need one"
        )
    return DnaAdapter(model, tokenizer, device)


def auto_tokenizer_vocab(path: Path) -> dict[int, str]:
    """id -> token of the directory's ``AutoTokenizer``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return {i: t for t, i in tok.get_vocab().items()}


register(Family("toy", detect=is_toy, load=load_toy, vocab=auto_tokenizer_vocab, priority=40))

"""The model-family registry: which families exist, how a directory's family is told, and loading.

Each family's module registers a :class:`Family` record when it is imported (``register(...)``
beside its own loader): how to recognise its checkpoint layout from the files (``detect``), how to
load it behind the adapter interface (``load``) and how to read its vocabulary cheaply
(``vocab``). The registry itself knows the families only by name and module path
(:data:`FAMILY_MODULES`); a module is imported on first use of its family (they pull in torch and
transformers), and detection imports them all. It never imports a family's internals.

A family outside saeflow plugs in the same way: ``register(Family(...))`` before loading.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from saeflow.utils import SaeflowError

#: family -> the module that registers it (imported only when that family is used or detected).
FAMILY_MODULES: dict[str, str] = {
    "toy": "saeflow.models.hf",
    "dnabert": "saeflow.models.dnabert",
    "nucleotide_transformer": "saeflow.models.nucleotide_transformer",
    "geneformer": "saeflow.models.geneformer",
    "dnabert2": "saeflow.models.dnabert2",
    "scgpt": "saeflow.models.scgpt",
}
#: saeflow's own families, in their documentation order.
FAMILIES = tuple(FAMILY_MODULES)
#: ``family=`` values that mean "tell the family from the directory's files".
DETECT = (None, "", "auto")


@dataclass(frozen=True)
class Family:
    """One model family.

    ``detect(path)``: whether the directory (a :class:`~pathlib.Path`) has this family's layout,
    from its files only (no weights read); checked in ascending ``priority``, first match wins,
    so a rule may rely on the families before it not having matched. ``load(path, device=None)``:
    the model behind a :class:`~saeflow.models.base.ModelAdapter`. ``vocab(path)``: id -> token
    string, as the adapter tokenizes. ``layout``: for a family whose checkpoints are not a
    ``save_pretrained`` directory (no ``config.json``), how its files look (named in errors).
    """

    name: str
    detect: Callable[[Path], bool]
    load: Callable[..., object]
    vocab: Callable[[Path], dict[int, str]]
    priority: int
    layout: str = ""


_registered: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add (or, re-imported, replace) a family; returns it."""
    if family.name in DETECT:
        raise SaeflowError(f"cannot register a model family named {family.name!r}")
    _registered[family.name] = family
    return family


def known() -> tuple[str, ...]:
    """Every family name: saeflow's, then any registered from outside."""
    return FAMILIES + tuple(n for n in _registered if n not in FAMILY_MODULES)


def lookup(name: str) -> Family:
    """The :class:`Family` called ``name``, importing its module on first use."""
    if name not in _registered:
        module = FAMILY_MODULES.get(name)
        if module is None:
            raise SaeflowError(f"unknown model family {name!r}; known: {', '.join(known())}")
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise SaeflowError(
                f"model family {name!r}: its module {module} is not available "
                f"({type(e).__name__}: {e})"
            ) from None
        if name not in _registered:
            raise SaeflowError(f"model family {name!r}: {module} does not register it")
    return _registered[name]


def detect_family(path: str | os.PathLike) -> str:
    """The model family of a local model directory, from files only (no weights are read).

    Each family's ``detect`` rule is asked in ascending priority, first match wins (each is a
    layout only that family ships):

    * (10) no ``config.json`` but ``args.json`` + ``vocab.json`` + a ``*.pt`` file: ``scgpt``;
    * (20) a BERT ``config.json`` and Geneformer's ``token_dictionary*.pkl`` in the directory,
      below it, or in a ``geneformer/`` directory beside it: ``geneformer``;
    * (30) ``config.json`` with ``alibi_starting_size`` or an ``auto_map`` into ``bert_layers``:
      ``dnabert2``;
    * (40) ``tokenizer.json`` (a fast tokenizer with offsets, which neither DNABERT nor NT
      ships): ``toy``;
    * (50) ``vocab.txt`` starting ``[PAD] [UNK] [CLS] [SEP] [MASK]``: ``dnabert``; (60) starting
      with ``<unk> <pad> <mask> <cls>``: ``nucleotide_transformer``.

    Anything else raises a :class:`SaeflowError` that lists the families to pass as ``family=``.
    """
    path = Path(path)
    if not path.is_dir():
        raise SaeflowError(f"{path}: not a model directory (no such directory)")
    families = sorted((lookup(n) for n in known()), key=lambda f: (f.priority, f.name))
    for fam in families:
        if fam.detect(path):
            return fam.name
    cfg = path / "config.json"
    if not cfg.is_file():
        layouts = "".join(f", or {f.layout}" for f in families if f.layout)
        raise SaeflowError(
            f"{path}: not a model directory (no config.json); expected a save_pretrained "
            f"layout{layouts}"
        )
    try:
        model_type = json.loads(cfg.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise SaeflowError(f"{cfg}: not valid JSON ({e})") from None
    raise SaeflowError(
        f"{path}: cannot tell the model family from its files (config.json model_type "
        f"{model_type!r}); pass family= one of {', '.join(known())}"
    )


def load_model(path: str | os.PathLike, device=None, family: str | None = None, options=None):
    """Load a local model directory as a :class:`~saeflow.models.base.ModelAdapter` (no network).

    ``family`` is a registered family's name (:data:`FAMILIES`); None, ``""`` or ``"auto"``
    detect it from the directory's files (:func:`detect_family`). ``"toy"`` is the workflow's own
    model (``save_pretrained`` with a fast tokenizer); the others are the released checkpoints'
    layouts, documented in each family's module.

    ``options``: family name -> keyword arguments of that family's loader; only the entry of the
    family loaded is used (the workflow passes ``models.<name>.geneformer`` as
    ``{"geneformer": {...}}`` whatever the family turns out to be).
    """
    if family in DETECT:
        family = detect_family(path)
    kwargs = dict((options or {}).get(family) or {})
    return lookup(family).load(path, device=device, **kwargs)


def load_vocab(path: str | os.PathLike, family: str | None = None) -> dict[int, str]:
    """id -> token string of a model directory's vocabulary (cheap: no model weights).

    ``family`` is the one the model is loaded with (None, ``""``, ``"auto"``:
    :func:`detect_family`, which raises when the family cannot be told, as loading would), so
    the vocabulary is always the one its adapter tokenizes with; each family reads its own
    files (see its ``vocab``).
    """
    if family in DETECT:
        family = detect_family(path)
    return lookup(family).vocab(Path(path))

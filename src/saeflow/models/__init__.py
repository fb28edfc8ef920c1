"""Model loading and adapters: one interface over every model family (see :mod:`.registry`)."""

from saeflow.models.registry import (  # noqa: F401
    FAMILIES,
    Family,
    detect_family,
    load_model,
    load_vocab,
    register,
)

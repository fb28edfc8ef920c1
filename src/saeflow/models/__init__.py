"""Model loading and adapters: one interface over every model family."""

from saeflow.models.adapter import DnaAdapter, load_model  # noqa: F401

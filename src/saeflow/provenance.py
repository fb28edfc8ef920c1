"""Fingerprints of the config that defines a workflow output (stdlib only).

Every rule whose output depends on config values carries a fingerprint of those values, and of
everything upstream that defines its inputs, in its ``params:`` (workflow/rules/provenance.smk).
Snakemake's params rerun trigger then replans the rule when any of them changes, whether or not
the intermediates in between still exist: a job that fails after a config change has its outputs
removed, and Snakemake does not regenerate a missing intermediate whose consumers look up to
date, so a fingerprint held only by the first rule would be forgotten with its output.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os

__all__ = ["canonical_json", "fingerprint"]


def _default(obj):
    """JSON for the few non-JSON values a config may hold; anything else is an error, never a
    repr() that could differ between runs."""
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=canonical_json)
    if isinstance(obj, (datetime.date, datetime.datetime, datetime.time)):
        return obj.isoformat()  # YAML reads an unquoted 2024-01-01 as a date
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot fingerprint a {type(obj).__name__}: {obj!r}")


def canonical_json(obj) -> str:
    """One text per value: keys sorted, no whitespace, tuples as lists, ASCII only."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_default
    )


def fingerprint(obj, length: int = 16) -> str:
    """A short stable hash (sha1 hex prefix) of ``obj``'s canonical JSON.

    Equal for equal values whatever the order of dict keys; any changed value changes it.
    """
    if not 1 <= length <= 40:
        raise ValueError(f"length must be 1..40, not {length}")
    return hashlib.sha1(canonical_json(obj).encode("ascii")).hexdigest()[:length]

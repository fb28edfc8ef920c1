"""JASPAR motifs from pyjaspar's offline database: frequency matrices, sampling, scoring."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from saeflow.utils import SaeflowError

BASES = "ACGT"
_COMP = str.maketrans("ACGTNacgtn", "TGCANtgcan")


def revcomp(seq: str) -> str:
    return seq.translate(_COMP)[::-1]


@dataclass(frozen=True)
class Motif:
    matrix_id: str
    name: str
    counts: np.ndarray  # (L, 4) in ACGT order

    @property
    def length(self) -> int:
        return self.counts.shape[0]

    def probabilities(self, pseudocount: float = 0.0) -> np.ndarray:
        c = self.counts + pseudocount
        return c / c.sum(axis=1, keepdims=True)

    def information_content(self) -> np.ndarray:
        p = self.probabilities(pseudocount=0.01)
        return 2.0 + (p * np.log2(p)).sum(axis=1)

    def sample(self, rng: np.random.Generator, n: int, temperature: float = 1.0) -> list[str]:
        """Draw ``n`` instances, each position independently from the matrix.

        ``temperature`` < 1 sharpens the column distributions (p**(1/T),
        renormalised): instances stay faithful to the matrix's consensus while
        keeping its per-position variability. T = 1 samples the raw frequencies.
        """
        p = self.probabilities(pseudocount=0.0)
        if temperature <= 0:
            raise SaeflowError(f"motif sampling temperature must be > 0, got {temperature}")
        if temperature != 1.0:
            p = p ** (1.0 / temperature)
            p = p / p.sum(axis=1, keepdims=True)
        cum = p.cumsum(axis=1)
        u = rng.random((n, self.length, 1))
        idx = (u > cum[None, :, :]).sum(axis=2).clip(0, 3)
        letters = np.array(list(BASES))
        return ["".join(row) for row in letters[idx]]


@lru_cache(maxsize=None)
def _db(release: str):
    from pyjaspar import jaspardb

    return jaspardb(release=release)


@lru_cache(maxsize=None)
def load_jaspar(matrix_id: str, release: str = "JASPAR2024") -> Motif:
    """Fetch a matrix by ID from pyjaspar's bundled SQLite (no network)."""
    m = _db(release).fetch_motif_by_id(matrix_id)
    if m is None:
        raise SaeflowError(f"JASPAR matrix {matrix_id!r} not found in pyjaspar's {release}")
    counts = np.array([m.counts[b] for b in BASES], dtype=float).T
    return Motif(matrix_id=matrix_id, name=str(m.name), counts=counts)

"""Per-feature activation histograms on fixed log-spaced bins, accumulated while streaming.

One (d_sae x N_BINS) count matrix per layer: bin ``b`` counts the tokens where the feature's
activation lies in ``[EDGES[b], EDGES[b + 1])``; values below ``EDGES[0]`` go to the first bin and
values at or above ``EDGES[-1]`` to the last. Fixed edges (1e-3 .. 1e3, 8 bins per decade) need no
first pass to find each feature's range, and make histograms of different layers comparable. Zeros
(the feature not firing) are not counted: ``frequency`` says how often it fires.
"""

from __future__ import annotations

import numpy as np

#: bin edges: 10^-3 .. 10^3, 8 bins per decade
EDGES = np.logspace(-3, 3, 49)
N_BINS = len(EDGES) - 1
FILE = "histogram.npy"


def empty(n_features: int) -> np.ndarray:
    return np.zeros((n_features, N_BINS), np.int64)


def accumulate(hist: np.ndarray, features: np.ndarray, values: np.ndarray) -> None:
    """Add the nonzero codes (``features[i]`` fired with ``values[i]``) to ``hist`` in place."""
    if len(values) == 0:
        return
    b = np.clip(
        np.searchsorted(EDGES, np.asarray(values, np.float64), side="right") - 1, 0, N_BINS - 1
    )
    hist += np.bincount(np.asarray(features, np.int64) * N_BINS + b, minlength=hist.size).reshape(
        hist.shape
    )

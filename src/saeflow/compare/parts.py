"""One function per comparison part (config ``comparisons[].parts``): what a comparison rule decides
between reading its runs' files and writing its tables, so that the rule scripts stay recipes.

``runs`` is the rule's ``params.runs``: per run a mapping with label, model, dataset, sae, kind,
family, subfolder, n_layers, layers and ``files`` (the paths the part reads). The statistics are in
:mod:`saeflow.compare.runs` (and the modules it calls); here only the loops over runs, layers and
run pairs, and the checks between them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from saeflow.compare.runs import (
    MATCH_SUMMARY_COLUMNS,
    layer_pairs,
    match_pair,
    matching_rows,
    sample_rows,
)
from saeflow.utils import SaeflowError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- matching


class RunCodes:
    """Mean SAE codes of the runs' layers (:mod:`saeflow.compare.codes`), each computed once.

    ``codes(label, layer, "sequence", seq_idx)``: (len(seq_idx), d_sae) array, the mean code of
    each sampled sequence (the sample depends on the dataset only, so it is the same for every pair
    the run is in, and is not part of the cache key); ``codes(label, layer, "gene")``: a DataFrame
    of the mean code at each gene's tokens, indexed by gene name.
    """

    def __init__(self, runs: Sequence[Mapping]):
        from saeflow.activations import ActivationStore

        self.stores = {r["label"]: ActivationStore(r["files"]["activations"]) for r in runs}
        self.sae_dirs = {r["label"]: dict(zip(r["layers"], r["files"]["saes"])) for r in runs}
        self._cache: dict = {}

    def n_sequences(self, label: str) -> int:
        """Sequences (or cells) in the run's activation store."""
        return len(self.stores[label].seq_offsets) - 1

    def __call__(self, label: str, layer: int, rows: str, seq_idx: np.ndarray | None = None):
        from saeflow.compare.codes import gene_codes, sequence_codes
        from saeflow.sae.base import load_sae

        key = (label, layer, rows)
        if key not in self._cache:
            sae = load_sae(self.sae_dirs[label][layer])
            if rows == "sequence":
                self._cache[key] = sequence_codes(self.stores[label], sae, layer, seq_idx)
            else:
                c, names = gene_codes(self.stores[label], sae, layer)
                self._cache[key] = pd.DataFrame(c, index=names)
        return self._cache[key]


def sample_sequences(
    run_a: Mapping, run_b: Mapping, stored: Mapping[str, int], *, max_rows: int, seed: int
) -> np.ndarray:
    """The sequences two runs on one dataset are matched over: a seeded sample of at most
    ``max_rows`` of the dataset's sequences (run A's sequence table), after checking that both
    runs' activation stores hold every one of them (``stored``: label -> sequences in the store)."""
    n_seq = len(pd.read_parquet(run_a["files"]["sequences"], columns=["name"]))
    for r in (run_a, run_b):
        if stored[r["label"]] != n_seq:
            raise SaeflowError(
                f"{r['files']['activations']}: {stored[r['label']]} sequences "
                f"but {run_a['files']['sequences']} lists {n_seq}"
            )
    return sample_rows(n_seq, max_rows, seed)


def shared_gene_rows(
    A: pd.DataFrame, B: pd.DataFrame, *, max_rows: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene codes of two runs on the genes both vocabularies hold, by name, row i of each the
    same gene (a seeded sample of at most ``max_rows`` of them)."""
    from saeflow.compare.matching import shared_rows

    ia, ib, _ = shared_rows(A.index, B.index)
    pick = sample_rows(len(ia), max_rows, seed)
    return A.to_numpy()[ia[pick]], B.to_numpy()[ib[pick]]


def match_runs(
    runs: Sequence[Mapping],
    *,
    rows: str = "auto",
    threshold: float = 0.5,
    n_null: int = 19,
    max_rows: int = 5000,
    seed: int = 0,
    max_gap: float | None = None,
    codes=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Feature matching of every pair of runs (in the order given) at every depth-aligned layer
    pair, over the rows :func:`matching_rows` allows (pairs it refuses are skipped).

    ``codes``: a :class:`RunCodes` of the runs (the default), or any object with its call and
    ``n_sequences``. Returns the summary (:data:`MATCH_SUMMARY_COLUMNS`, one row per layer pair) and
    run A's per-feature matches of every layer pair (an empty frame when no pair was matched).
    """
    by = {r["label"]: r for r in runs}
    codes = RunCodes(runs) if codes is None else codes
    summary, features = [], []
    labels = list(by)
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            kind = matching_rows(rows, by[a], by[b])
            if kind is None:
                continue
            pairs = layer_pairs(
                {a: by[a]["layers"], b: by[b]["layers"]},
                {a: by[a]["n_layers"], b: by[b]["n_layers"]},
                max_gap=max_gap,
            )
            seq_idx = None
            if kind == "sequence":
                stored = {k: codes.n_sequences(k) for k in (a, b)}
                seq_idx = sample_sequences(by[a], by[b], stored, max_rows=max_rows, seed=seed)
            for pair in pairs.to_dict("records"):
                A = codes(a, pair["layer_a"], kind, seq_idx)
                B = codes(b, pair["layer_b"], kind, seq_idx)
                if kind == "gene":  # genes both vocabularies hold, by name
                    A, B = shared_gene_rows(A, B, max_rows=max_rows, seed=seed)
                row, feats = match_pair(
                    A, B, pair, kind, threshold=threshold, n_null=n_null, seed=seed
                )
                summary.append(row)
                features.append(feats)
    table = pd.DataFrame(summary, columns=MATCH_SUMMARY_COLUMNS)
    return table, pd.concat(features, ignore_index=True) if features else pd.DataFrame()

"""One function per comparison part (config ``comparisons[].parts``): what a comparison rule decides
between reading its runs' files and writing its tables, so that the rule scripts stay recipes.

``runs`` is the rule's ``params.runs``: per run a mapping with label, model, dataset, sae, kind,
family, subfolder, n_layers, layers and ``files`` (the paths the part reads). The statistics are in
:mod:`saeflow.compare.runs` (and the modules it calls); here only the loops over runs, layers and
run pairs, and the checks between them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from saeflow.compare.runs import (
    MATCH_SUMMARY_COLUMNS,
    layer_pairs,
    match_pair,
    matching_rows,
)
from saeflow.stats import sample_rows
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
        from saeflow.compare.codes import gene_mean_codes, sequence_codes
        from saeflow.sae.base import load_sae

        key = (label, layer, rows)
        if key not in self._cache:
            sae = load_sae(self.sae_dirs[label][layer])
            if rows == "sequence":
                self._cache[key] = sequence_codes(self.stores[label], sae, layer, seq_idx)
            else:
                c, names = gene_mean_codes(self.stores[label], sae, layer)
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


# --------------------------------------------------------------------------- per-layer tables

ORGANISATION_COLUMNS = [
    "alive",
    "module_fraction",
    "superposition_share",
    "persistent_fraction",
    "moderate_fraction",
    "transient_fraction",
]


def organisation_tables(runs: Sequence[Mapping]) -> dict[str, pd.DataFrame]:
    """Per run (by label) its per-layer organisation table
    (:func:`saeflow.compare.runs.run_organisation_table`) from each layer's feature table (a catalog
    or cell-atlas directory holding ``features.parquet``) and, for cell runs, the tracking table."""
    import os

    from saeflow.compare.runs import read_layer_table, run_organisation_table

    tables = {}
    for r in runs:
        feats = {
            layer: read_layer_table(
                os.path.join(d, "features.parquet"),
                required=["feature", "alive"],
                what="feature table",
            )
            for layer, d in zip(r["layers"], r["files"]["features"])
        }
        tracking = r["files"].get("tracking")
        tables[r["label"]] = run_organisation_table(
            feats, read_layer_table(tracking, what="tracking table") if tracking else None
        )
    return tables


def annotation_columns(tables: Mapping[str, pd.DataFrame]) -> tuple[list[str], list[str]]:
    """The columns of the runs' annotation-rate tables (:func:`annotation_rates`) to compare: the
    rates any run has (alive, annotated, novel fraction, in that order), then the other columns
    every run has, in the first run's order."""
    rates = [
        c
        for c in ("alive_fraction", "annotated_fraction", "novel_fraction")
        if any(c in t.columns for t in tables.values())
    ]
    shared = [
        c
        for c in next(iter(tables.values())).columns
        if c != "layer" and all(c in t.columns for t in tables.values()) and c not in rates
    ]
    return rates, shared


def head_scan_depth_tables(
    scans: Mapping[str, pd.DataFrame], n_layers: Mapping[str, int], motifs: Sequence[str]
) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """One per-layer head-scan summary (:func:`head_scan_layers`) per run and motif, named
    ``"<run> <motif>"``, with its run's layer count: the lines of the depth plot."""
    from saeflow.compare.runs import head_scan_layers

    per = {
        (r, m): t[t.motif == m]
        for r, sc in scans.items()
        for t in [head_scan_layers(sc)]
        for m in motifs
    }
    return {f"{r} {m}": t for (r, m), t in per.items()}, {f"{r} {m}": n_layers[r] for r, m in per}


# --------------------------------------------------------------------------- OV / QK audit


def audit_runs(
    runs: Sequence[Mapping],
    load_adapter: Callable[[Mapping], object],
    *,
    heads: str = "top",
    top_heads: int = 6,
    k: int = 5,
) -> pd.DataFrame:
    """The OV/QK audit of each run (:func:`saeflow.compare.runs.audit_run`), a ``run`` column first.

    Per run: the motif features of every layer's ablation table (layers without one are left out;
    a run with none is an error), their SAE decoder rows, the heads the head scan selects
    (:func:`select_audit_heads`) and their weights from the model ``load_adapter(run)`` returns.
    """
    from saeflow.compare.runs import (
        audit_run,
        motif_directions,
        read_layer_table,
        select_audit_heads,
    )
    from saeflow.decoder import decoder_rows

    frames = []
    for r in runs:
        f = r["files"]
        scan = read_layer_table(
            f["head_scan"], required=["motif", "layer", "head", "r"], what="head scan"
        )
        ablation = {
            layer: read_layer_table(p, required=["motif", "feature"], what="ablation table")
            for layer, p in zip(r["layers"], f["ablation"])
        }
        ablation = {layer: t for layer, t in ablation.items() if len(t)}
        if not ablation:
            raise SaeflowError(
                f"{', '.join(f['ablation'])}: no motif feature in any layer's ablation table; "
                "nothing to audit"
            )
        decoders = {
            layer: decoder_rows(p) for layer, p in zip(r["layers"], f["saes"]) if layer in ablation
        }
        directions = motif_directions(ablation, decoders)
        selected = select_audit_heads(
            scan, sorted(ablation), r["n_layers"], mode=heads, top=top_heads
        )
        adapter = load_adapter(r)
        weights = {b: adapter.head_weights(b) for b in sorted({b for b, _ in selected})}
        t = audit_run(weights, selected, directions, k=k)
        t.insert(0, "run", r["label"])
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def audit_plot_table(table: pd.DataFrame, n_runs: int) -> pd.DataFrame:
    """The audit table as the heatmap shows it: of several runs, each direction named by its run."""
    if n_runs > 1:
        return table.assign(direction=table.run + " " + table.direction)
    return table


# --------------------------------------------------------------------------- perturbation


def log_specificity_pairs(pairs: pd.DataFrame, logger: logging.Logger | None = None) -> None:
    """One log line per paired layer comparison of :func:`compare_specificity` (its ``pairs``)."""
    logger = logger or log
    for p in pairs.itertuples():
        logger.info(
            "%s L%d vs %s L%d: %d shared TFs, specificity %.3f vs %.3f, McNemar p %.3g (q %.3g)",
            p.run_a,
            p.layer_a,
            p.run_b,
            p.layer_b,
            p.shared_tfs,
            p.specificity_a,
            p.specificity_b,
            p.p_mcnemar,
            p.q_mcnemar,
        )

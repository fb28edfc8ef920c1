"""The tables of the summary rules: per-layer JSON records, per-layer tables and metric files of a
run gathered into one table each (the plots of them are in :mod:`saeflow.plots`)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from saeflow.utils import read_json, read_table


def eval_summary(metrics: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per layer of the SAE evaluation (each layer's metrics JSON), by layer, in the columns
    of :data:`saeflow.columns.EVAL_SUMMARY_COLUMNS`."""
    from saeflow.columns import EVAL_SUMMARY_COLUMNS

    summary = pd.DataFrame([read_json(f) for f in metrics]).sort_values("layer")
    return summary[EVAL_SUMMARY_COLUMNS]


def catalog_summary(catalogs: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per layer of the feature catalog (each catalog directory's summary.json), by layer,
    in the columns of :data:`saeflow.columns.CATALOG_SUMMARY_COLUMNS`."""
    from saeflow.columns import CATALOG_SUMMARY_COLUMNS

    summary = pd.DataFrame([read_json(Path(d) / "summary.json") for d in catalogs])
    return summary.sort_values("layer")[CATALOG_SUMMARY_COLUMNS]


def recovery_summary(tables: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """The layers' ground-truth recovery tables in one, by motif and layer."""
    return pd.concat([read_table(p) for p in tables], ignore_index=True).sort_values(
        ["motif_id", "layer"]
    )


def training_logs(sae_dirs: Iterable[str | os.PathLike]) -> dict[int, pd.DataFrame]:
    """Layer -> the training log (training_log.jsonl) of each SAE directory ``.../layer<L>``."""
    return {
        int(re.search(r"layer(\d+)$", str(d)).group(1)): pd.read_json(
            Path(d) / "training_log.jsonl", lines=True
        )
        for d in sae_dirs
    }


def toy_lm_metrics(model_dir: str | os.PathLike) -> tuple[dict, pd.DataFrame]:
    """The toy DNA model's metrics (saeflow_metrics.json in its directory): the dict, and a table of
    them (metric, value) by name."""
    m = read_json(Path(model_dir) / "saeflow_metrics.json")["metrics"]
    return m, pd.DataFrame([{"metric": k, "value": v} for k, v in sorted(m.items())])


def toy_cell_lm_metrics(metrics: str | os.PathLike) -> pd.DataFrame:
    """The toy cell model's metrics JSON as a table (metric, value) in the file's order, nested
    records left out."""
    m = read_json(metrics)
    rows = [(k, v) for k, v in m.items() if not isinstance(v, dict)]
    return pd.DataFrame(rows, columns=["metric", "value"])

"""saeflow.summaries: the summary rules' tables from per-layer records and metric files."""

from __future__ import annotations

import json

import pandas as pd

from saeflow.columns import CATALOG_SUMMARY_COLUMNS, EVAL_SUMMARY_COLUMNS
from saeflow.summaries import (
    catalog_summary,
    eval_summary,
    recovery_summary,
    toy_cell_lm_metrics,
    toy_lm_metrics,
    training_logs,
)


def test_per_layer_summaries_are_sorted_by_layer_in_their_columns(tmp_path):
    paths, dirs = [], []
    for layer in (10, 2, 4):
        rec = {c: 0.5 for c in reversed(EVAL_SUMMARY_COLUMNS)} | {"layer": layer, "extra": 1}
        (tmp_path / f"e{layer}.json").write_text(json.dumps(rec))
        paths.append(tmp_path / f"e{layer}.json")
        d = tmp_path / f"cat{layer}"
        d.mkdir()
        rec = {c: 1 for c in reversed(CATALOG_SUMMARY_COLUMNS)} | {"layer": layer, "zz": 0}
        (d / "summary.json").write_text(json.dumps(rec))
        dirs.append(d)
    ev = eval_summary(paths)
    assert list(ev.columns) == EVAL_SUMMARY_COLUMNS and ev.layer.tolist() == [2, 4, 10]
    cat = catalog_summary(dirs)
    assert list(cat.columns) == CATALOG_SUMMARY_COLUMNS and cat.layer.tolist() == [2, 4, 10]


def test_recovery_summary_by_motif_then_layer(tmp_path):
    for layer in (4, 2):
        pd.DataFrame({"motif_id": ["MB", "MA"], "layer": layer, "f1": [layer, -layer]}).to_csv(
            tmp_path / f"r{layer}.tsv", sep="\t", index=False
        )
    t = recovery_summary([tmp_path / "r4.tsv", tmp_path / "r2.tsv"])
    assert t[["motif_id", "layer"]].values.tolist() == [["MA", 2], ["MA", 4], ["MB", 2], ["MB", 4]]


def test_training_logs_by_the_layer_the_directory_names(tmp_path):
    dirs = []
    for layer in (10, 1):
        d = tmp_path / "layer1x" / f"layer{layer}"  # the layer is the directory's own suffix
        d.mkdir(parents=True)
        pd.DataFrame({"tokens": [1, 2], "fvu": [layer, layer]}).to_json(
            d / "training_log.jsonl", orient="records", lines=True
        )
        dirs.append(str(d))
    logs = training_logs(dirs)
    assert sorted(logs) == [1, 10] and logs[10].fvu.tolist() == [10, 10]


def test_toy_metric_tables(tmp_path):
    (tmp_path / "saeflow_metrics.json").write_text(
        json.dumps({"metrics": {"masked_acc_z": 0.5, "loss": 1.0}, "other": 1})
    )
    m, t = toy_lm_metrics(tmp_path)
    assert m == {"masked_acc_z": 0.5, "loss": 1.0}
    assert t.values.tolist() == [["loss", 1.0], ["masked_acc_z", 0.5]]  # by name
    (tmp_path / "cell.json").write_text(json.dumps({"b": 1, "nested": {"x": 1}, "a": 2.5}))
    t = toy_cell_lm_metrics(tmp_path / "cell.json")
    assert list(t.columns) == ["metric", "value"] and t.metric.tolist() == ["b", "a"]

"""The resource plan (saeflow.models.plan): token counts against the real tokenizers, shapes,
bounds, the example configs' figures, and the disk-budget refusal."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from tinymodels import make_dnabert_dir, make_nt_dir
from wfutil import REPO, resolved_config

from saeflow.models import load_model
from saeflow.models.plan import (
    PUBLISHED,
    check_budget,
    disk_budget,
    dna_tokens,
    model_shape,
    resource_plan,
    summary_line,
)
from saeflow.utils import SaeflowError

DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def resolved(*extra: dict) -> dict:
    """config/config.yaml with ``extra`` merged over it, as the workflow resolves it."""
    return resolved_config(DEFAULT, *extra)


def example(name: str, **plan) -> dict:
    ex = yaml.safe_load((REPO / "config" / "examples" / f"{name}.yaml").read_text())
    return resolved(ex, {"plan": plan} if plan else {})


@pytest.mark.parametrize("family", ["dnabert", "nucleotide_transformer"])
def test_dna_token_counts_equal_the_tokenizers(tmp_path, family):
    """The k-mer families' formulas count exactly the tokens their tokenizers store."""
    if family == "dnabert":
        make_dnabert_dir(tmp_path, 6, max_pos=64)
    else:
        make_nt_dir(tmp_path)
    ad = load_model(tmp_path, family=family)
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), n)) for n in (6, 7, 11, 12, 13, 30, 41, 60)]
    tb = ad.tokenize(seqs)
    stored = (~tb.special).sum(axis=1)
    max_tokens = 64 if family == "dnabert" else 10_000
    assert dna_tokens(family, [len(s) for s in seqs], max_tokens).tolist() == stored.tolist()


def test_shapes_from_config_json_published_table_and_toy(tmp_path):
    cfg = example("geneformer_k562")
    m = cfg["models"]["geneformer_v2"]
    shape = model_shape("geneformer_v2", m, tmp_path)  # not downloaded: the published table
    assert shape == PUBLISHED[("ctheodoris/Geneformer", "")] and shape.d_model == 1152
    d = tmp_path / "resources" / "models" / "geneformer_v2"
    d.mkdir(parents=True)
    (d / "config.json").write_text(
        json.dumps(
            dict(hidden_size=96, num_hidden_layers=3, intermediate_size=200, model_type="bert")
        )
    )
    got = model_shape("geneformer_v2", m, tmp_path)  # downloaded: its config.json wins
    assert (got.d_model, got.n_layers, got.d_ffn, got.family) == (96, 3, 200, "geneformer")
    toy = model_shape("toy_esm", cfg["models"]["toy_esm"], tmp_path)
    assert (toy.d_model, toy.n_layers, toy.source) == (64, 4, "toy settings")


def test_geneformer_example_is_hundreds_of_gb_and_refused_over_budget(tmp_path):
    cfg = example("geneformer_k562", disk_budget_gb=100)
    table, totals = resource_plan(cfg, tmp_path)
    row = table.set_index("model").loc["geneformer_v2"]
    # 2,000 controls + 16 targets x 50 cells, at most 4,094 gene tokens each (an upper bound)
    assert row["items"] == 2800 and row.tokens == 2800 * 4094 and row.basis == "bound"
    assert row.store_bytes == pytest.approx(2800 * 4094 * (18 * 1152 * 2 + 12))
    assert row.peak_bytes == 2 * row.store_bytes  # four shards merged: both copies for a while
    budget = disk_budget(cfg, tmp_path)
    assert budget == (100e9, "plan.disk_budget_gb")
    line = summary_line(totals, budget)
    assert "writes 476 GB" in line and "GPU-hours" in line and "FLOP-based" in line
    with pytest.raises(SaeflowError) as e:
        check_budget(table, totals, budget)
    msg = str(e.value)
    for knob in ("k562_control", "n_cells", "models.geneformer_v2.layers", "plan.disk_budget_gb"):
        assert knob in msg
    check_budget(table, totals, (10**13, "test"))  # a large enough budget passes


def test_unbounded_dataset_is_reported_not_counted(tmp_path):
    cfg = example("dnabert2_ctcf")
    cfg["datasets"]["gm12878_ctcf"]["max_peaks"] = 0
    table, totals = resource_plan(cfg, tmp_path)
    row = table.set_index("dataset").loc["gm12878_ctcf"]
    assert row.basis == "unknown" and "max_peaks" in row.note
    assert totals["unknown"] == 1 and "1 store(s) unbounded" in summary_line(totals, (1, "x"))
    bounded = table[table.basis != "unknown"]
    assert totals["store_bytes"] == bounded.store_bytes.sum() > 0


def test_prepared_tables_give_exact_counts(tmp_path):
    cfg = resolved()
    ds = tmp_path / "results" / "datasets" / "ctcf_peaks"
    ds.mkdir(parents=True)
    pd.DataFrame({"sequence": ["A" * 64] * 10 + ["C" * 30] * 5}).to_parquet(
        ds / "sequences.parquet"
    )
    table, _ = resource_plan(cfg, tmp_path)
    row = table.set_index(["model", "dataset"]).loc[("toy_esm", "ctcf_peaks")]
    assert row["items"] == 15 and row.tokens == 10 * 64 + 5 * 30 and row.basis == "exact"


def test_token_sampling_shrinks_the_geneformer_example_below_a_tenth(tmp_path):
    cfg = example("geneformer_k562")
    full, _ = resource_plan(cfg, tmp_path)
    cfg["datasets"]["k562_control"]["tokens_per_item"] = 256
    sampled, _ = resource_plan(cfg, tmp_path)
    a, b = (t.set_index("model").loc["geneformer_v2"] for t in (full, sampled))
    assert b.tokens == 2800 * 256 and b.store_bytes < 0.1 * a.store_bytes


def test_extraction_work_stops_at_the_highest_stored_layer_and_gives_cpu_hours(tmp_path):
    """Capture-only passes stop after the highest stored layer: storing only the middle block
    plans half the forward FLOPs of storing the last one (same tokens); CPU and GPU hours are the
    same FLOPs at plan.cpu_tflops and plan.gpu_tflops."""
    cfg = example("geneformer_k562")
    rows = {}
    for layers in ([18], [9], [3, 9]):
        cfg["models"]["geneformer_v2"]["layers"] = layers
        table, totals = resource_plan(cfg, tmp_path)
        rows[tuple(layers)] = table.set_index("model").loc["geneformer_v2"]
    top, mid, two = rows[(18,)], rows[(9,)], rows[(3, 9)]
    assert mid.extract_tflop == pytest.approx(top.extract_tflop / 2)
    assert two.extract_tflop == pytest.approx(mid.extract_tflop)
    work = (top.extract_tflop + top.sae_tflop) * 1e12
    plan = cfg["plan"]
    assert top.cpu_hours == pytest.approx(work / (plan["cpu_tflops"] * 1e12) / 3600)
    assert top.gpu_hours == pytest.approx(work / (plan["gpu_tflops"] * 1e12) / 3600)
    assert "CPU-hours" in summary_line(totals, (1, "x"))

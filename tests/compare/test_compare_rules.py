"""The comparison rules (config `comparisons:`): the library glue they call (saeflow.compare.runs /
codes), the plan they make, and one end-to-end run of every comparison rule on synthetic results of
two runs written into a temporary workdir (the upstream rules are not run: --allowed-rules)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from wfutil import copy_workflow, load_test_config, planned_jobs, smk

from saeflow.compare.runs import (
    annotation_rates,
    audit_candidate_blocks,
    audit_run,
    compare_head_scans,
    compare_probe_predictions,
    depth_pairs,
    head_scan_layers,
    layer_pairs,
    matching_rows,
    motif_directions,
    select_audit_heads,
)
from saeflow.utils import SaeflowError

# --------------------------------------------------------------------------- library glue (fast)


def test_layer_pairs_line_up_models_of_different_depth():
    pairs = layer_pairs({"deep": [2, 4], "shallow": [1, 2]}, {"deep": 4, "shallow": 2})
    assert pairs[["layer_a", "layer_b"]].values.tolist() == [[2, 1], [4, 2]]
    assert pairs.grid_depth.tolist() == [0.5, 1.0]
    # a 12-layer model against a 2-layer one: the grid is the shallow model's, nearest layers of the
    # deep
    pairs = layer_pairs({"a": range(1, 13), "b": [1, 2]}, {"a": 12, "b": 2})
    assert pairs.layer_a.tolist() == [6, 12] and pairs.layer_b.tolist() == [1, 2]
    # a run that only has its last layer does not pretend to cover the middle
    al = depth_pairs({"a": [4], "b": [1, 2]}, {"a": 4, "b": 2}, max_gap=0.1)
    assert al[al.run == "a"].layer.tolist() == [4]
    pairs = layer_pairs({"a": [1, 2], "b": [4]}, {"a": 2, "b": 4}, max_gap=0.1)
    assert pairs.layer_a.tolist() == [2] and pairs.layer_b.tolist() == [4]


def test_annotation_rates_are_fractions_of_alive_features():
    dna = pd.DataFrame(
        {
            "layer": [1, 2],
            "Alive": [30, 40],
            "Dead": [10, 0],
            "SVD-aligned": [10, 10],
            "Novel": [20, 30],
        }
    )
    r = annotation_rates(dna, "peaks")
    assert r.alive_fraction.tolist() == [0.75, 1.0] and r.novel_fraction.tolist() == pytest.approx(
        [2 / 3, 0.75]
    )
    cells = pd.DataFrame({"layer": [1], "Features": [100], "Alive": [0], "Annotated": [0]})
    r = annotation_rates(cells, "cells")
    # no alive: no rate
    assert r.alive_fraction.tolist() == [0.0] and np.isnan(r.annotated_fraction.iloc[0])
    with pytest.raises(SaeflowError, match="Novel"):
        annotation_rates(dna.drop(columns="Novel"), "peaks")


def _scan(n_layers, heads=2, best=None):
    rows = []
    for layer in range(1, n_layers + 1):
        for h in range(heads):
            r = 0.1 * h + 0.01 * layer
            if best == (layer, h):
                r = 0.9
            rows.append(
                dict(
                    motif="MA0139.1",
                    layer=layer,
                    head=h,
                    r=r,
                    p=0.01,
                    q=0.02,
                    rho=1 + r,
                    passes=r >= 0.5,
                )
            )
    return pd.DataFrame(rows)


def test_head_scan_summary_and_depth_alignment():
    t = head_scan_layers(_scan(2, best=(2, 1)))
    row = t[t.layer == 2].iloc[0]
    assert (
        row.best_r == 0.9
        and row.best_r_head == 1
        and row.passing == 1
        and row.passing_fraction == 0.5
    )
    al = compare_head_scans({"a": _scan(4), "b": _scan(2, best=(1, 0))}, {"a": 4, "b": 2})
    assert set(al.motif) == {"MA0139.1"} and al.grid_depth.unique().tolist() == [0.5, 1.0]
    assert al[(al.run == "b") & (al.layer == 1)].best_r.item() == 0.9
    with pytest.raises(SaeflowError, match="no motif in common"):
        compare_head_scans(
            {"a": _scan(2), "b": _scan(2).assign(motif="MA0108.1")}, {"a": 2, "b": 2}
        )
    # a head scan without q predates the BH criterion: its passes used uncorrected p
    with pytest.raises(SaeflowError, match=r"no column\(s\) \['q'\]"):
        head_scan_layers(_scan(2).drop(columns="q"))


def _preds(layers, score_fn, n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    frames = []
    for layer in layers:
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "level": "sequence",
                    "target": "label",
                    "control": "features",
                    "item": [f"s{i}" for i in range(n)],
                    "label": y,
                    "score": score_fn(y, rng),
                }
            )
        )
        frames.append(frames[-1].assign(control="gc_only", score=rng.normal(size=n)))
    return pd.concat(frames, ignore_index=True)


def test_paired_probe_comparison_on_known_cases():
    good = _preds([2, 4], lambda y, r: y + 0.5 * r.normal(size=len(y)), seed=1)
    noise = _preds([1, 2], lambda y, r: r.normal(size=len(y)), seed=2)
    t = compare_probe_predictions(
        {"good": good, "noise": noise}, {"good": 4, "noise": 2}, n_boot=200
    )
    assert t[["layer_a", "layer_b"]].values.tolist() == [[2, 1], [4, 2]]
    assert (t.delta > 0.3).all() and (t.ci_low > 0).all() and (t.p_delong < 1e-4).all()
    assert (t.n_items == 200).all() and (t.n_pos == 100).all()
    # the same scores in both runs: delta exactly 0, p = 1
    t = compare_probe_predictions({"a": good, "b": good.copy()}, {"a": 4, "b": 4}, n_boot=50)
    assert (t.delta == 0).all() and (t.p_delong == 1).all() and (t.ci_low == 0).all()
    # different test items cannot be paired
    other = noise.assign(item=noise.item + "x")
    with pytest.raises(SaeflowError, match="test items differ"):
        compare_probe_predictions(
            {"good": good, "other": other}, {"good": 4, "other": 2}, n_boot=10
        )
    with pytest.raises(SaeflowError, match="control='nope'"):
        compare_probe_predictions(
            {"good": good, "noise": noise}, {"good": 4, "noise": 2}, control="nope"
        )


def test_audit_heads_and_directions():
    assert audit_candidate_blocks([2, 4], 4) == [2, 3, 4]
    scan = _scan(4, best=(1, 1))  # the best head is in block 1, next to no SAE layer
    heads = select_audit_heads(scan, [2, 4], 4, top=2)
    assert (1, 1) not in heads and len(heads) == 2 and all(b in (2, 3, 4) for b, _ in heads)
    assert len(select_audit_heads(scan, [2, 4], 4, mode="all")) == 6
    W = np.eye(4, 6).T  # 6 latents in d_model 4
    with pytest.raises(SaeflowError, match="outside the SAE's 6 latents"):
        motif_directions({2: pd.DataFrame({"motif": ["m"], "feature": [9]})}, {2: W})
    dirs = motif_directions({2: pd.DataFrame({"motif": ["m"], "feature": [1]})}, {2: W})
    # a head of block 3 that copies e1 (the direction of feature 1 at layer 2, its read side)
    d, h = 4, 2
    W_V = np.zeros((1, d, h))
    W_V[0, 1, 0] = 1.0
    W_O = np.zeros((1, h, d))
    W_O[0, 0, 1] = 2.0
    weights = {3: {"W_Q": np.ones((1, d, h)), "W_K": np.ones((1, d, h)), "W_V": W_V, "W_O": W_O}}
    t = audit_run(weights, [(3, 0)], dirs, k=1)
    row = t.iloc[0]
    assert row.side == "read" and row.sae_layer == 2 and row.direction == "m f1 L2 read"
    assert row.self_gain == pytest.approx(2.0) and row.write_cos == pytest.approx(1.0)
    with pytest.raises(SaeflowError, match="no \\(head, direction\\) pair"):
        audit_run({1: weights[3]}, [(1, 0)], dirs)


def test_matching_rows_only_where_meaningful():
    dna = lambda ds: {"dataset": ds, "kind": "peaks"}  # noqa: E731
    cells = lambda ds: {"dataset": ds, "kind": "cells"}  # noqa: E731
    assert matching_rows("auto", dna("d"), dna("d")) == "sequence"
    assert matching_rows("auto", dna("d"), dna("e")) is None
    assert matching_rows("auto", cells("k562"), cells("ts")) == "gene"
    assert matching_rows("auto", cells("k"), cells("k")) == "sequence"
    assert matching_rows("gene", cells("k"), cells("k")) == "gene"
    assert matching_rows("sequence", cells("k"), cells("t")) is None


def test_group_mean_codes_equal_the_dense_computation(tmp_path):
    torch = pytest.importorskip("torch")
    from conftest import make_store

    from saeflow.compare.codes import gene_mean_codes, sequence_codes
    from saeflow.sae.topk import TopKSAE

    store, _ = make_store(tmp_path, n=600, d=16)
    sae = TopKSAE(16, 32, k=4)
    x = torch.from_numpy(np.asarray(store.layer(1), dtype=np.float32))
    with torch.no_grad():
        z = sae.encode(x).numpy()
    pick = np.array([0, 7, 59])
    got = sequence_codes(store, sae, 1, pick)
    want = np.stack([z[s * 10 : (s + 1) * 10].mean(0) for s in pick])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    tok = store.tokens.assign(
        gene=np.where(np.arange(600) % 3 == 0, "G1", np.where(np.arange(600) % 3 == 1, "G2", None))
    )
    tok.to_parquet(store.dir / "tokens.parquet")
    store._tokens = None
    codes, names = gene_mean_codes(store, sae, 1)
    assert names.tolist() == ["G1", "G2"]
    np.testing.assert_allclose(codes[1], z[np.arange(600) % 3 == 1].mean(0), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the plan (dry runs)


def _dry(tmp_path, cfg, *targets, check=True):
    wd = copy_workflow(tmp_path, cfg)
    return smk(wd, "-n", *targets, check=check, timeout=300)


def test_test_config_plans_the_comparison_with_the_right_inputs(tmp_path):
    p = _dry(
        tmp_path,
        load_test_config(),
        "--forceall",
        "results/comparisons/toy_sizes/probes.tsv",
        "results/comparisons/toy_sizes/ov_audit.tsv",
        "results/comparisons/toy_sizes/matching.tsv",
    )
    out = p.stdout + p.stderr
    jobs = planned_jobs(p)
    assert jobs["compare_probes"] == 1 and jobs["ov_audit"] == 1 and jobs["compare_matching"] == 1
    assert jobs["probes"] == 2 and jobs["train_toy_model"] == 2  # both models, each probed once
    blocks = out.split("\n\n")
    probes = next(b for b in blocks if "rule compare_probes" in b)
    for m in ("toy_esm", "toy_esm_small"):
        assert f"results/{m}/ctcf_peaks/evidence/probe_predictions.parquet" in probes
    audit = next(b for b in blocks if "rule ov_audit" in b)
    assert "results/toy_esm/ctcf_peaks/evidence/topk_x4_k16/layer2/ablation.tsv" in audit
    assert "toy_esm_small" not in audit  # only runs[0] is audited
    # toy_esm_small is not in `runs`: the whole plan builds only what the comparison reads of it
    p = _dry(tmp_path / "all", load_test_config())
    rules = set()
    for b in (p.stdout + p.stderr).split("\n\n"):  # a job's block: its rule and what it writes
        out = [line for line in b.splitlines() if line.strip().startswith("output:")]
        if "rule " in b and out and "toy_esm_small" in out[0]:
            rules.add(b.split("rule ", 1)[1].split(":")[0])
    assert {"patching", "feature_ablation", "feature_evidence", "ground_truth_recovery"}.isdisjoint(
        rules
    ), rules
    assert {"probes", "head_scan", "train_sae", "feature_catalog"} <= rules


def test_parts_follow_the_runs(tmp_path):
    """Runs on two datasets: no paired probes, no per-sequence
    matching; the rest is still planned."""
    cfg = load_test_config()
    cfg["comparisons"][0]["runs"][1]["dataset"] = "promoter_tata"
    p = _dry(tmp_path, cfg, "--forceall", "all")
    jobs = planned_jobs(p)
    assert "compare_probes" not in jobs and "compare_matching" not in jobs
    assert {
        "compare_quality",
        "compare_annotation",
        "compare_head_scan",
        "compare_organisation",
        "ov_audit",
    } <= set(jobs)


# --------------------------------------------------------------------------- end to end on
# synthetic results


SYN = {
    "references": {"toy": {"source": "toy"}},
    "models": {
        "big": {
            "source": "toy",
            "toy": {"hidden_size": 16, "num_layers": 4, "num_heads": 2, "intermediate_size": 32},
            "layers": [2, 4],
        },
        "small": {
            "source": "toy",
            "toy": {"hidden_size": 8, "num_layers": 2, "num_heads": 2, "intermediate_size": 16},
        },
    },
    "datasets": {"peaks": {"reference": "toy", "kind": "peaks"}},
    "runs": [{"model": "big", "dataset": "peaks"}],
    "saes": {"s": {"arch": "topk", "expansion": 2, "k": 2}},
    "evidence": {"motifs": ["MA0139.1"]},
    "comparisons": [
        {
            "name": "pair",
            "runs": [{"model": "big", "dataset": "peaks"}, {"model": "small", "dataset": "peaks"}],
            "probes": {"n_boot": 100},
            "matching": {"n_null": 5},
        }
    ],
}
COMPARE_RULES = [
    "compare_quality",
    "compare_annotation",
    "compare_organisation",
    "compare_probes",
    "compare_head_scan",
    "compare_matching",
    "ov_audit",
]


def _write_fake_results(wd, n_seq=60, seq_len=8):
    """What the upstream rules would have written for the two runs of SYN (small, random,
    consistent)."""
    from saeflow.columns import CATALOG_SUMMARY_COLUMNS, EVAL_SUMMARY_COLUMNS
    from saeflow.models.tokenizer import build_nucleotide_tokenizer
    from saeflow.models.toy_lm import build_model
    from saeflow.sae.topk import TopKSAE
    from saeflow.utils import write_json

    rng = np.random.default_rng(0)
    y = np.arange(n_seq) % 2
    seqs = pd.DataFrame(
        {
            "name": [f"seq{i}" for i in range(n_seq)],
            "sequence": ["ACGTACGT"] * n_seq,
            "label": y,
            "split": np.where(np.arange(n_seq) % 3 == 0, "test", "train"),
        }
    )
    (wd / "results/datasets/peaks").mkdir(parents=True)
    seqs.to_parquet(wd / "results/datasets/peaks/sequences.parquet")
    factors = rng.normal(size=(n_seq, 3))  # per-sequence factors both models see
    test = seqs[seqs.split == "test"]
    for model, d, n_layers, layers in (("big", 16, 4, [2, 4]), ("small", 8, 2, [1, 2])):
        base = wd / "results" / model / "peaks"
        ev = pd.DataFrame(
            [{c: 0.1 for c in EVAL_SUMMARY_COLUMNS} | {"layer": lyr} for lyr in layers]
        )
        (base / "eval/s").mkdir(parents=True)
        ev.to_csv(base / "eval/s/summary.tsv", sep="\t", index=False)
        cat = pd.DataFrame(
            [{c: 5 for c in CATALOG_SUMMARY_COLUMNS} | {"layer": lyr} for lyr in layers]
        )
        (base / "catalog/s").mkdir(parents=True)
        cat.to_csv(base / "catalog/s/summary.tsv", sep="\t", index=False)
        acts = base / "activations"
        acts.mkdir(parents=True)
        mix = {lyr: rng.normal(size=(3, d)) for lyr in layers}
        tok = pd.DataFrame(
            {
                "seq": np.repeat(np.arange(n_seq), seq_len),
                "pos": np.tile(np.arange(seq_len), n_seq),
                "token_id": 5,
                "start": np.tile(np.arange(seq_len), n_seq),
                "end": np.tile(np.arange(seq_len), n_seq) + 1,
            }
        )
        tok.to_parquet(acts / "tokens.parquet")
        np.save(acts / "seq_offsets.npy", np.arange(n_seq + 1) * seq_len)
        for lyr in layers:
            x = np.repeat(factors @ mix[lyr], seq_len, axis=0) + 0.3 * rng.normal(
                size=(n_seq * seq_len, d)
            )
            np.save(acts / f"layer{lyr}.npy", x.astype(np.float16))
            sae = TopKSAE(d, 2 * d, k=2, seed=lyr)
            sae.save(base / f"sae/s/layer{lyr}")
            feats = pd.DataFrame(
                {
                    "feature": np.arange(2 * d),
                    "alive": np.arange(2 * d) % 4 != 0,
                    "svd_aligned": np.arange(2 * d) % 3 == 0,
                }
            )
            (base / f"catalog/s/layer{lyr}").mkdir(parents=True)
            feats.to_parquet(base / f"catalog/s/layer{lyr}/features.parquet")
            (base / f"evidence/s/layer{lyr}").mkdir(parents=True)
            pd.DataFrame({"motif": ["MA0139.1"], "feature": [lyr]}).to_csv(
                base / f"evidence/s/layer{lyr}/ablation.tsv", sep="\t", index=False
            )
        write_json(
            acts / "manifest.json",
            {
                "n_tokens": n_seq * seq_len,
                "d_model": d,
                "layers": layers,
                "n_sequences": n_seq,
                "model": model,
                "dataset": "peaks",
            },
        )
        preds = pd.concat(
            [
                pd.DataFrame(
                    {
                        "layer": lyr,
                        "level": "sequence",
                        "target": "label",
                        "control": "features",
                        "item": test.name,
                        "label": test.label,
                        "score": test.label * (2 if model == "big" else 0.2)
                        + rng.normal(size=len(test)),
                    }
                )
                for lyr in layers
            ]
        )
        preds.to_parquet(base / "evidence/probe_predictions.parquet")
        scan = _scan(n_layers, best=(3, 1) if model == "big" else (1, 0))
        scan.to_csv(base / "evidence/head_scan.tsv", sep="\t", index=False)
    tk = build_nucleotide_tokenizer(64)
    lm = build_model(
        dict(hidden_size=16, num_layers=4, num_heads=2, intermediate_size=32, seq_len=64), tk
    )
    lm.save_pretrained(wd / "resources/models/big")
    tk.save_pretrained(wd / "resources/models/big")


@pytest.mark.workflow
def test_comparison_rules_run_end_to_end_on_synthetic_results(tmp_path):
    wd = copy_workflow(tmp_path, SYN)
    _write_fake_results(wd)
    out = wd / "results/comparisons/pair"
    targets = [
        str((out / f"{n}.tsv").relative_to(wd))
        for n in (
            "quality",
            "annotation",
            "organisation",
            "probes",
            "head_scan",
            "matching",
            "ov_audit",
        )
    ]
    smk(wd, "--allowed-rules", *COMPARE_RULES, "--", *targets, timeout=600)
    for n in (
        "quality",
        "annotation",
        "organisation",
        "probes",
        "head_scan",
        "matching",
        "ov_audit",
    ):
        assert (out / f"{n}.png").stat().st_size > 5_000, n
    q = pd.read_csv(out / "quality.tsv", sep="\t")
    assert q.grid_depth.unique().tolist() == [0.5, 1.0] and set(q.run) == {
        "big/peaks/s",
        "small/peaks/s",
    }
    assert q[q.run == "big/peaks/s"].layer.tolist() == [2, 4] and q[
        q.run == "small/peaks/s"
    ].layer.tolist() == [1, 2]
    a = pd.read_csv(out / "annotation.tsv", sep="\t")
    assert (a.alive_fraction == 0.5).all() and (a.novel_fraction == 1.0).all()
    o = pd.read_csv(out / "organisation.tsv", sep="\t")
    assert o.superposition_share.between(0, 1).all() and o.module_fraction.isna().all()
    pr = pd.read_csv(out / "probes.tsv", sep="\t")
    assert pr[["layer_a", "layer_b"]].values.tolist() == [[2, 1], [4, 2]]
    assert (pr.n_items == 20).all() and (pr.delta > 0).all() and pr.p_delong.between(0, 1).all()
    hs = pd.read_csv(out / "head_scan.tsv", sep="\t")
    # layer 2, head 1
    assert hs[(hs.run == "big/peaks/s") & (hs.grid_depth == 0.5)].best_r.item() == pytest.approx(
        0.12
    )
    m = pd.read_csv(out / "matching.tsv", sep="\t")
    assert len(m) == 2 and (m.rows == "sequence").all() and (m.n_rows == 60).all()
    assert m.matched_fraction.between(0, 1).all() and m.p_empirical.between(0, 1).all()
    # run A's 32 features per layer pair
    assert len(pd.read_parquet(out / "matching_features.parquet")) == 2 * 32
    au = pd.read_csv(out / "ov_audit.tsv", sep="\t")
    assert (au.run == "big/peaks/s").all() and set(au.side) <= {"read", "write"}
    assert au.write_cos.between(0, 1 + 1e-9).all() and au.self_gain.notna().all()
    # the top head of the scan next to an SAE layer (block 3, head 1: read side layer 2) is audited
    assert ((au.layer == 3) & (au["head"] == 1) & (au.side == "read") & (au.sae_layer == 2)).any()
    # bad input: a head scan without its r column stops the audit with the file's name, no output
    # left
    (out / "ov_audit.tsv").unlink()
    (out / "ov_audit.png").unlink()
    pd.read_csv(wd / "results/big/peaks/evidence/head_scan.tsv", sep="\t").drop(columns="r").to_csv(
        wd / "results/big/peaks/evidence/head_scan.tsv", sep="\t", index=False
    )
    p = smk(
        wd,
        "--allowed-rules",
        "ov_audit",
        "--",
        "results/comparisons/pair/ov_audit.tsv",
        check=False,
    )
    log = (wd / "logs/ov_audit/pair.log").read_text()
    assert p.returncode != 0 and "head_scan.tsv" in log and "'r'" in log
    assert not (out / "ov_audit.tsv").exists() and not (out / "ov_audit.png").exists()

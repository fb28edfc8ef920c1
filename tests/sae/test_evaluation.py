import json
import types

import numpy as np
import pandas as pd
import pytest
import torch

from saeflow import plots
from saeflow.activations import ActivationStore, extract_activations, split_rows
from saeflow.columns import EVAL_SUMMARY_COLUMNS as SUMMARY_COLUMNS
from saeflow.models import load_model
from saeflow.sae import build_sae
from saeflow.sae.evaluation import (
    DENSE_THRESHOLD,
    activation_metrics,
    evaluate_sae,
    frequency_histogram,
    lm_loss_recovered,
)
from saeflow.utils import SaeflowError, write_json

SEQS = ["ACGTACGTAACCGGTT", "GGGCCCATAT", "TTTTAAAACCCGGATC", "ACGT", "CATGCATGCATGAAAT"]


def tiny_sae(d, seed=0):
    sae = build_sae({"arch": "topk", "expansion": 2, "k": 4, "seed": seed}, d)
    with torch.no_grad():
        sae.b_enc[0] = -1e3  # never fires: dead
        sae.b_enc[1] = 1e3  # always among the top k: dense
    return sae.eval()


def syn_store(tmp_path, n=3000, d=8, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) * 2 + 1).astype(np.float16)
    root = tmp_path / "acts"
    root.mkdir()
    np.save(root / "layer1.npy", x)
    pd.DataFrame(
        {"seq": np.arange(n) // 10, "pos": np.arange(n) % 10, "token_id": 0, "start": 0, "end": 1}
    ).to_parquet(root / "tokens.parquet")
    write_json(
        root / "manifest.json", {"n_tokens": n, "d_model": d, "layers": [1], "n_sequences": n // 10}
    )
    return ActivationStore(root), x


def test_streamed_metrics_equal_direct_numpy(tmp_path):
    store, x = syn_store(tmp_path)
    sae = tiny_sae(8)
    rows = np.flatnonzero(np.arange(len(x)) % 3 != 0)  # non-contiguous rows, many chunks
    ev = activation_metrics(sae, store, 1, rows, chunk=257)

    xs = x[rows].astype(np.float64)
    with torch.no_grad():
        z = sae.encode(torch.from_numpy(xs).float()).double().numpy()
        xh = sae.decode(torch.from_numpy(z).float()).double().numpy()
    fvu = ((xs - xh) ** 2).sum() / ((xs - xs.mean(0)) ** 2).sum()
    freq = (z > 0).mean(0)
    assert ev["n_tokens"] == len(rows)
    assert ev["fvu"] == pytest.approx(fvu, rel=1e-4)
    assert ev["explained_variance"] == pytest.approx(1 - fvu, rel=1e-4)
    assert ev["l0"] == pytest.approx((z > 0).sum(1).mean())
    np.testing.assert_allclose(ev["frequency"], freq)
    assert ev["dead_fraction"] == pytest.approx((freq == 0).mean()) and ev["n_dead"] >= 1
    assert (
        ev["dense_fraction"] == pytest.approx((freq > DENSE_THRESHOLD).mean())
        and ev["n_dense"] >= 1
    )
    assert freq[0] == 0 and freq[1] == 1
    # the same rows given as [start, end) ranges (what split_ranges returns) give the same numbers
    ranges = np.array([[r, r + 2] for r in range(1, len(x), 3)])
    ev2 = activation_metrics(sae, store, 1, ranges, chunk=100)
    assert ev2["n_tokens"] == ev["n_tokens"] and ev2["fvu"] == pytest.approx(ev["fvu"], rel=1e-9)
    np.testing.assert_array_equal(ev2["frequency"], ev["frequency"])

    hist = frequency_histogram(ev["frequency"], ev["n_tokens"])
    assert sum(hist["counts"]) + hist["n_dead"] == sae.d_sae
    assert hist["log10_edges"][-1] == 0 and hist["log10_edges"][0] <= np.log10(1 / len(rows))


def test_nan_in_activations_names_the_file(tmp_path):
    store, x = syn_store(tmp_path)
    arr = np.load(store.dir / "layer1.npy", mmap_mode="r+")
    arr[1234, 3] = np.nan
    arr.flush()
    sae = tiny_sae(8)
    with pytest.raises(
        SaeflowError, match=r"acts/layer1\.npy: NaN or inf in activation rows \[1234\]"
    ):
        activation_metrics(sae, store, 1, np.arange(len(x)), chunk=500)
    # a held-out split that does not touch the bad row is fine
    activation_metrics(sae, store, 1, np.arange(1000), chunk=500)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_identity_recovers_all_and_zero_recovers_nothing(tiny_model_dir, layer):
    ad = load_model(tiny_model_dir)
    ident = lm_loss_recovered(  # min_gap 0: the tiny random model's gaps are small
        ad, torch.nn.Identity(), SEQS, layer, mask_prob=0.3, seed=1, batch_size=2, min_gap=0
    )
    assert ident["loss_sae"] == ident["loss_clean"]  # exactly: the same tensor goes back in
    assert ident["loss_recovered"] == 1.0
    assert ident["loss_zero"] != ident["loss_clean"]
    zero = lm_loss_recovered(
        ad, torch.zeros_like, SEQS, layer, mask_prob=0.3, seed=1, batch_size=2, min_gap=0
    )
    assert zero["loss_sae"] == zero["loss_zero"] and zero["loss_recovered"] == 0.0
    assert (
        zero["loss_clean"] == ident["loss_clean"]
        and zero["n_masked_tokens"] == ident["n_masked_tokens"]
    )
    # undefined (NaN, with the reason) when zeroing the layer moves the loss by less than min_gap
    gap = abs(ident["loss_zero"] - ident["loss_clean"])
    assert not ident["loss_note"]
    for min_gap, defined in ((0.5 * gap, True), (2 * gap, False)):
        r = lm_loss_recovered(
            ad,
            torch.nn.Identity(),
            SEQS,
            layer,
            mask_prob=0.3,
            seed=1,
            batch_size=2,
            min_gap=min_gap,
        )
        assert r["loss_clean"] == ident["loss_clean"] and r["min_gap"] == min_gap
        if defined:
            assert r["loss_recovered"] == 1.0 and not r["loss_note"]
        else:
            assert np.isnan(r["loss_recovered"]) and "less than min_gap" in r["loss_note"]
            assert f"zero-ablating layer {layer} moves" in r["loss_note"]
    n_genuine = sum(len(s) for s in SEQS)
    assert ident["n_masked_tokens"] == sum(max(1, round(0.3 * len(s))) for s in SEQS) < n_genuine
    # batching does not change which tokens are masked (losses agree up to padding numerics)
    one = lm_loss_recovered(
        ad, torch.nn.Identity(), SEQS, layer, mask_prob=0.3, seed=1, batch_size=1
    )
    assert one["n_masked_tokens"] == ident["n_masked_tokens"]
    assert one["loss_clean"] == pytest.approx(ident["loss_clean"], rel=1e-4)


def test_evaluate_sae_end_to_end(tiny_model_dir, tmp_path):
    ad = load_model(tiny_model_dir)
    seqs = pd.DataFrame({"sequence": SEQS * 2, "split": ["train", "test"] * 5})
    seqs.to_parquet(tmp_path / "sequences.parquet")
    extract_activations(ad, seqs, [1, 2], tmp_path / "acts", batch_size=4)
    tiny_sae(ad.d_model).save(tmp_path / "sae")
    metrics, freq = evaluate_sae(
        tmp_path / "sae",
        tmp_path / "acts",
        tmp_path / "sequences.parquet",
        ad,
        2,
        batch_size=3,
        max_sequences=4,
    )
    _, test_rows = split_rows(ActivationStore(tmp_path / "acts").tokens, seqs)
    assert metrics["n_tokens"] == len(test_rows) and metrics["n_sequences"] == 4
    assert (
        set(SUMMARY_COLUMNS) <= set(metrics) and len(freq) == metrics["n_latents"] == 2 * ad.d_model
    )
    assert metrics["site"] == "output of esm.encoder.emb_layer_norm_after"  # hidden_states[2]
    json.dumps(metrics)  # JSON-safe as returned
    plots.frequency_histogram(metrics["frequency_histogram"], tmp_path / "hist.png")
    plots.eval_summary(
        pd.DataFrame([metrics, dict(metrics, layer=3, loss_recovered=None)])[SUMMARY_COLUMNS],
        tmp_path / "summary.png",
    )
    assert (tmp_path / "hist.png").stat().st_size > 0 and (
        tmp_path / "summary.png"
    ).stat().st_size > 0

    # the adapter passed in is the one checked against the SAE's width
    other = types.SimpleNamespace(d_model=ad.d_model + 1, family="other")
    with pytest.raises(SaeflowError, match=rf"d_in={ad.d_model}, but the model \(other\) has"):
        evaluate_sae(tmp_path / "sae", tmp_path / "acts", tmp_path / "sequences.parquet", other, 2)

    arr = np.load(tmp_path / "acts" / "layer2.npy", mmap_mode="r+")
    arr[test_rows[2], 0] = np.inf
    arr.flush()
    with pytest.raises(
        SaeflowError, match=rf"{tmp_path}/acts/layer2\.npy: NaN or inf in activation rows"
    ):
        evaluate_sae(tmp_path / "sae", tmp_path / "acts", tmp_path / "sequences.parquet", ad, 2)
    with pytest.raises(SaeflowError, match="no held-out sequences"):
        seqs.assign(split="train").to_parquet(tmp_path / "train_only.parquet")
        evaluate_sae(tmp_path / "sae", tmp_path / "acts", tmp_path / "train_only.parquet", ad, 2)

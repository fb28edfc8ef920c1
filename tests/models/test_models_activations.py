import numpy as np
import pandas as pd
import pytest

from saeflow.activations import ActivationStore, extract_activations, split_rows
from saeflow.models import load_model
from saeflow.models.tokenizer import build_nucleotide_tokenizer
from saeflow.utils import SaeflowError


def test_tokenizer_offsets_map_tokens_to_bases():
    tok = build_nucleotide_tokenizer()
    enc = tok(["ACGTN", "GG"], return_offsets_mapping=True, padding=True)
    ids = enc["input_ids"][0]
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "A", "C", "G", "T", "N", "[SEP]"]
    assert enc["offset_mapping"][0] == [(0, 0), (0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 0)]


def test_load_model_roundtrip(tiny_model_dir):
    ad = load_model(tiny_model_dir)
    assert ad.n_layers == 2 and ad.d_model == 16
    tb = ad.tokenize(["ACGTACGT", "ACG"])
    hs = ad.hidden_states(tb, [0, 1, 2])
    assert hs[2].shape == (2, 10, 16)
    assert tb.special[1].sum() == 2 + 5  # CLS, SEP and 5 pads


def test_load_model_rejects_non_model_dir(tmp_path):
    with pytest.raises(SaeflowError, match="not a model directory"):
        load_model(tmp_path)


def test_extract_writes_every_layer_in_one_pass(tiny_model_dir, tmp_path):
    ad = load_model(tiny_model_dir)
    seqs = pd.DataFrame(
        {"sequence": ["ACGTACGTAA", "GGGCCC", "TTTTAAAACCCG"], "split": ["train", "test", "train"]}
    )
    calls = []
    orig = ad.model.forward
    ad.model.forward = lambda *a, **k: (calls.append(1), orig(*a, **k))[1]
    man = extract_activations(
        ad, seqs, [1, 2], tmp_path / "acts", batch_size=2, meta={"model": "m"}
    )
    assert len(calls) == 2  # ceil(3 / 2) batches, all layers from each pass
    store = ActivationStore(tmp_path / "acts")
    assert man["n_tokens"] == 10 + 6 + 12 and store.manifest["model"] == "m"
    x = store.layer(2)
    assert x.dtype == np.float16 and isinstance(x, np.memmap)
    t = store.tokens
    assert t.seq.tolist() == [0] * 10 + [1] * 6 + [2] * 12
    assert (t.end - t.start == 1).all() and t.start[t.seq == 2].tolist() == list(range(12))
    # rows equal a direct forward pass of that sequence alone (no padding effects)
    tb = ad.tokenize(["GGGCCC"])
    direct = ad.hidden_states(tb, [2])[2][0, 1:-1].numpy()
    np.testing.assert_allclose(x[10:16].astype(np.float32), direct, atol=2e-2, rtol=1e-2)
    tr, te = split_rows(t, seqs)
    assert set(t.seq[te]) == {1} and set(t.seq[tr]) == {0, 2}


def test_store_reports_nan(tiny_model_dir, tmp_path):
    ad = load_model(tiny_model_dir)
    seqs = pd.DataFrame({"sequence": ["ACGTACGTAA"], "split": ["train"]})
    extract_activations(ad, seqs, [1], tmp_path / "acts")
    arr = np.load(tmp_path / "acts" / "layer1.npy", mmap_mode="r+")
    arr[3, 0] = np.nan
    arr.flush()
    with pytest.raises(SaeflowError, match="NaN"):
        list(ActivationStore(tmp_path / "acts").iter_chunks(1))


def _scaled(ad, layer, factor, rows=slice(None)):
    """Make the adapter's hidden_states return layer ``layer`` multiplied by ``factor``
    at ``rows`` of the batch (other layers untouched)."""
    orig = ad.hidden_states

    def hidden_states(tb, layers):
        hs = orig(tb, layers)
        h = hs[layer].clone()
        h[rows] = h[rows] * factor
        return {**hs, layer: h}

    ad.hidden_states = hidden_states


SEQS = pd.DataFrame({"sequence": ["ACGTACGTAA", "GGGCCC", "TTTTAAAACCCG"], "split": ["train"] * 3})


def test_float16_overflow_stops_with_the_layer_and_no_store(tiny_model_dir, tmp_path):
    ad = load_model(tiny_model_dir)
    _scaled(ad, 2, 1e6, rows=slice(1, 2))  # the second sequence of each batch
    with pytest.raises(
        SaeflowError,
        match=r"layer 2: \d+ values \(of \d+\) for sequences 0\.\.1 exceed float16's range .*"
        r"activation_dtype: float32",
    ):
        extract_activations(ad, SEQS, [1, 2], tmp_path / "acts", batch_size=2)
    assert not (tmp_path / "acts").exists() and not list(tmp_path.iterdir())
    # float32 stores it; the merge of float32 shards stays float32
    from saeflow.activations import merge_activation_shards

    for i, (a, b) in enumerate([(0, 2), (2, 3)]):
        extract_activations(
            ad, SEQS.iloc[a:b], [2], tmp_path / f"s{i}", batch_size=2, seq_start=a, dtype="float32"
        )
    merge_activation_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    store = ActivationStore(tmp_path / "merged")
    x = store.layer(2)
    assert x.dtype == np.float32 and store.manifest["dtype"] == "float32"
    assert np.abs(x).max() > 65504 and np.isfinite(x).all()
    with pytest.raises(SaeflowError, match="activation dtype 'bfloat16'"):
        extract_activations(ad, SEQS, [2], tmp_path / "b", dtype="bfloat16")


def test_nan_in_a_batch_stops_with_the_layer_and_count(tiny_model_dir, tmp_path):
    ad = load_model(tiny_model_dir)
    _scaled(ad, 1, float("nan"), rows=slice(0, 1))
    with pytest.raises(
        SaeflowError, match=r"layer 1: the model's output has [1-9]\d* NaN and 0 inf values"
    ):
        extract_activations(ad, SEQS, [1, 2], tmp_path / "acts", batch_size=2)
    assert not list(tmp_path.iterdir())


def test_extract_rejects_bad_layer(tiny_model_dir, tmp_path):
    ad = load_model(tiny_model_dir)
    with pytest.raises(SaeflowError, match="out of range"):
        extract_activations(ad, pd.DataFrame({"sequence": ["ACGT"]}), [5], tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_shard_bounds_tile_the_table():
    from saeflow.activations import shard_bounds

    assert shard_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert [b - a for a, b in shard_bounds(2, 4)] == [0, 1, 1, 0]  # short tables give empty shards
    b = shard_bounds(1001, 7)
    assert b[0][0] == 0 and b[-1][1] == 1001 and all(x[1] == y[0] for x, y in zip(b, b[1:]))


@pytest.mark.parametrize("n_shards", [1, 3, 9])
def test_sharded_extraction_merges_into_the_unsharded_store(tiny_model_dir, tmp_path, n_shards):
    from saeflow.activations import merge_activation_shards, shard_bounds

    ad = load_model(tiny_model_dir)
    rng = np.random.default_rng(0)
    seqs = pd.DataFrame(
        {
            "sequence": ["".join(rng.choice(list("ACGT"), rng.integers(5, 15))) for _ in range(7)],
            "split": ["train", "test"] * 3 + ["train"],
        }
    )
    # batch_size 1: no padding, so sharded and whole runs see identical forward passes
    extract_activations(ad, seqs, [1, 2], tmp_path / "whole", batch_size=1)
    dirs = []
    for i, (a, b) in enumerate(shard_bounds(len(seqs), n_shards)):
        dirs.append(tmp_path / f"shard{i}")
        extract_activations(ad, seqs.iloc[a:b], [1, 2], dirs[-1], batch_size=1, seq_start=a)
    man = merge_activation_shards(dirs, tmp_path / "merged")
    whole, merged = ActivationStore(tmp_path / "whole"), ActivationStore(tmp_path / "merged")
    for lyr in (1, 2):
        np.testing.assert_array_equal(merged.layer(lyr), whole.layer(lyr))
    pd.testing.assert_frame_equal(merged.tokens, whole.tokens)
    np.testing.assert_array_equal(merged.seq_offsets, whole.seq_offsets)
    assert (
        man["files"] == whole.manifest["files"]
        and man["n_sequences"] == 7
        and man["shards"] == n_shards
    )


def test_merge_refuses_a_missing_shard(tiny_model_dir, tmp_path):
    from saeflow.activations import merge_activation_shards

    ad = load_model(tiny_model_dir)
    seqs = pd.DataFrame({"sequence": ["ACGTAC", "GGGCC", "TTAAC"], "split": ["train"] * 3})
    extract_activations(ad, seqs.iloc[:1], [1], tmp_path / "s0", seq_start=0)
    extract_activations(ad, seqs.iloc[2:], [1], tmp_path / "s2", seq_start=2)
    with pytest.raises(SaeflowError, match="s2: starts at sequence 2, expected 1"):
        merge_activation_shards([tmp_path / "s0", tmp_path / "s2"], tmp_path / "m")
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.*"))


def test_token_sampling_keeps_a_seeded_subset_of_each_item(tiny_model_dir, tmp_path):
    """tokens_per_item: each item's stored rows are the full store's rows at a uniform sample of
    its positions, the same whatever the batch size or sharding; items shorter than the cap keep
    everything."""
    from saeflow.activations import merge_activation_shards, sampled_rows, shard_bounds

    ad = load_model(tiny_model_dir)
    rng = np.random.default_rng(3)
    seqs = pd.DataFrame(
        {"sequence": ["".join(rng.choice(list("ACGT"), n)) for n in (5, 20, 31, 8, 26, 40)]}
    )
    extract_activations(ad, seqs, [1, 2], tmp_path / "full", batch_size=1)
    full = ActivationStore(tmp_path / "full")
    for bs in (1, 4):
        man = extract_activations(
            ad, seqs, [1, 2], tmp_path / f"s{bs}", batch_size=bs, tokens_per_item=10
        )
        assert man["n_tokens_unsampled"] == full.manifest["n_tokens"] == 130
        assert man["n_tokens"] == 5 + 10 + 10 + 8 + 10 + 10
    one, four = ActivationStore(tmp_path / "s1"), ActivationStore(tmp_path / "s4")
    pd.testing.assert_frame_equal(one.tokens, four.tokens)
    assert one.tokens.groupby("seq").size().tolist() == [5, 10, 10, 8, 10, 10]
    key = ["seq", "pos"]
    rows = full.tokens.reset_index().merge(one.tokens[key], on=key)["index"].to_numpy()
    assert len(rows) == len(one.tokens)  # a subset of the full store's tokens, in order
    np.testing.assert_array_equal(one.layer(2), full.layer(2)[rows])
    seed = one.manifest["sample_seed"]  # the same rows, chosen from the full store alone
    np.testing.assert_array_equal(sampled_rows(full.seq_offsets, 10, seed), rows)
    for s in (0, 3):  # short items keep every token
        assert (one.tokens.seq == s).sum() == (full.tokens.seq == s).sum()
    dirs = []
    for i, (a, b) in enumerate(shard_bounds(len(seqs), 3)):
        dirs.append(tmp_path / f"shard{i}")
        extract_activations(
            ad, seqs.iloc[a:b], [1, 2], dirs[-1], batch_size=1, seq_start=a, tokens_per_item=10
        )
    merged = merge_activation_shards(dirs, tmp_path / "merged")
    pd.testing.assert_frame_equal(ActivationStore(tmp_path / "merged").tokens, one.tokens)
    assert merged["n_tokens_unsampled"] == 130 and merged["tokens_per_item"] == 10
    other = tmp_path / "other"  # a shard sampled differently cannot be merged in
    extract_activations(ad, seqs.iloc[4:], [1, 2], other, batch_size=1, seq_start=4)
    with pytest.raises(SaeflowError, match="tokens_per_item"):
        merge_activation_shards(dirs[:2] + [other], tmp_path / "bad")

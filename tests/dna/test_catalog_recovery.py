import numpy as np
import pandas as pd
import torch

from saeflow.activations import ActivationStore
from saeflow.dna.catalog import build_catalog, mark_context, svd_alignment
from saeflow.dna.recovery import auroc_matrix, recovery_table
from saeflow.sae.topk import TopKSAE
from saeflow.utils import write_json


def test_auroc_matrix_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, size=(60, 3)).astype(float)  # many ties
    y = rng.random(60) < 0.4
    got = auroc_matrix(s, y)
    for f in range(3):
        pos, neg = s[y, f], s[~y, f]
        ref = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (
            len(pos) * len(neg)
        )
        assert abs(got[f] - ref) < 1e-12


def test_svd_alignment_finds_top_axis():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)) * np.array([10, 5, 1, 1, 1, 1])
    dec = np.array([[1.0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1]])
    cos, s = svd_alignment(dec, x, n_components=2)
    assert cos[0] > 0.99 and cos[1] < 0.5 and s[0] > s[1]


def test_mark_context_uppercases_firing_bases():
    mask = np.zeros(10, bool)
    mask[4:6] = True
    assert mark_context("ACGTACGTAC", 4, 5, mask, 2) == "gtACg"


def planted_setup(tmp_path):
    """Activations whose dimension 0 is 1 exactly on planted motif bases; an SAE reading it."""
    rng = np.random.default_rng(0)
    n_seq, L = 40, 30
    seqs, planted, rows, acts = [], [], [], []
    for s in range(n_seq):
        has = s % 2 == 0
        seqs.append(
            dict(
                name=f"s{s}",
                sequence="A" * L,
                label=int(has),
                split="test" if s % 4 < 2 else "train",
                chrom="c",
                start=s * 100,
                end=s * 100 + L,
            )
        )
        x = rng.normal(0, 0.1, size=(L, 4))
        x[:, 0] = 0
        if has:
            planted.append(
                dict(
                    chrom="c",
                    start=s * 100 + 10,
                    end=s * 100 + 19,
                    strand="+",
                    motif_id="MA0139.1",
                    motif_name="CTCF",
                    site="peak",
                    sequence="A" * 9,
                )
            )
            x[10:19, 0] = 1.0
        acts.append(x)
        rows += [dict(seq=s, pos=i + 1, token_id=5, start=i, end=i + 1) for i in range(L)]
    d = tmp_path / "acts"
    d.mkdir()
    np.save(d / "layer1.npy", np.concatenate(acts).astype(np.float16))
    pd.DataFrame(rows).to_parquet(d / "tokens.parquet")
    write_json(d / "manifest.json", {"n_tokens": n_seq * L, "d_model": 4, "layers": [1]})
    sae = TopKSAE(4, 4, k=1)
    with torch.no_grad():
        sae.W_enc.copy_(
            torch.eye(4) * torch.tensor([1.0, 0, 0, 0])
            - 0.5 * torch.tensor([[0, 1.0, 1, 1]] * 4).T * 0
        )
        sae.b_enc.copy_(torch.tensor([-0.5, -10, -10, -10]))
        sae.W_dec.copy_(torch.eye(4))
        sae.b_dec.zero_()
    return ActivationStore(d), pd.DataFrame(seqs), pd.DataFrame(planted), sae


def test_recovery_perfect_feature(tmp_path):
    store, seqs, planted, sae = planted_setup(tmp_path)
    t = recovery_table(sae, store, 1, seqs, planted)
    row = t.iloc[0]
    assert row.feature == 0
    assert row.precision == 1.0 and row.recall == 1.0 and row.f1 == 1.0 and row.auroc == 1.0
    # intervals moved at random within the same 30-bp windows overlap by chance
    assert row.f1_null < 0.75
    assert row.n_windows_with_motif_test == 10


def test_catalog_contexts_and_summary(tmp_path):
    store, seqs, planted, sae = planted_setup(tmp_path)
    params = dict(
        top_n=5, n_contexts=2, context=3, svd_components=2, svd_threshold=0.5, svd_sample=1000
    )
    from saeflow import histogram

    hist = histogram.empty(sae.d_sae)
    feats, ctx, summary, _ = build_catalog(
        sae, store, 1, seqs, {5: "A"}, params, {"explained_variance": 0.5}, hist=hist
    )
    # the activation histogram counts every token where the feature fires, in the bin of its value
    n = store.layer(1).shape[0]
    assert (hist.sum(1) == np.round(feats.frequency.to_numpy() * n)).all() and hist[0].sum() > 0
    assert summary["Alive"] == 1 and summary["Dead"] == 3 and summary["VarExpl"] == 0.5
    f0 = feats.set_index("feature").loc[0]
    assert abs(f0.frequency - 9 / 60) < 1e-9 and f0.top_tokens == "A:5"
    top = ctx[ctx.feature == 0].iloc[0]
    expected = "".join("A" if 10 <= i < 19 else "a" for i in range(top.start - 3, top.end + 3))
    assert top.context == expected and 10 <= top.start < 19


def _two_feature_setup(tmp_path):
    """Two features whose quality swaps between splits; a known answer for each split.

    Windows 0-3 are training, 4-7 held out; windows 0, 2, 4, 6 hold one planted instance at
    bases 10-18 (9 bases). Activation dimension f feeds SAE feature f (code = value - 0.5):
      training windows: feature 0 fires exactly on the motif, feature 1 on bases 10-13 only;
      held-out windows: feature 1 fires exactly on the motif, feature 0 on bases 10-11 only,
      plus bases 20-22 of window 5 (no motif there).
    Selection on the training split must pick feature 0 and report its held-out numbers.
    """
    L, n_seq = 30, 8
    seqs, planted, rows, acts = [], [], [], []
    for s in range(n_seq):
        test, has = s >= 4, s % 2 == 0
        seqs.append(
            dict(
                name=f"s{s}",
                sequence="A" * L,
                label=int(has),
                split="test" if test else "train",
                chrom="c",
                start=s * 100,
                end=s * 100 + L,
            )
        )
        x = np.zeros((L, 4))
        if has:
            planted.append(
                dict(
                    chrom="c",
                    start=s * 100 + 10,
                    end=s * 100 + 19,
                    strand="+",
                    motif_id="M1",
                    motif_name="m1",
                    site="peak",
                    sequence="A" * 9,
                )
            )
            if test:
                x[10:19, 1] = x[10:12, 0] = 1.0
            else:
                x[10:19, 0] = x[10:14, 1] = 1.0
        if s == 5:
            x[20:23, 0] = 1.0
        acts.append(x)
        rows += [dict(seq=s, pos=i + 1, token_id=5, start=i, end=i + 1) for i in range(L)]
    d = tmp_path / "acts"
    d.mkdir()
    np.save(d / "layer1.npy", np.concatenate(acts).astype(np.float16))
    pd.DataFrame(rows).to_parquet(d / "tokens.parquet")
    write_json(d / "manifest.json", {"n_tokens": n_seq * L, "d_model": 4, "layers": [1]})
    sae = TopKSAE(4, 4, k=2)
    with torch.no_grad():
        sae.W_enc.copy_(torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0])))
        sae.b_enc.copy_(torch.tensor([-0.5, -0.5, -10.0, -10.0]))
        sae.W_dec.copy_(torch.eye(4))
        sae.b_dec.zero_()
    return ActivationStore(d), pd.DataFrame(seqs), pd.DataFrame(planted), sae


def test_recovery_selects_on_training_split_and_reports_held_out_f1(tmp_path):
    store, seqs, planted, sae = _two_feature_setup(tmp_path)
    row = recovery_table(sae, store, 1, seqs, planted).iloc[0]
    # feature 0 is perfect on training windows; feature 1 is perfect on held-out ones
    assert row.feature == 0
    # held-out counts of feature 0: 2 + 2 motif bases hit, 3 false bases (window 5), 7 + 7 missed
    tp, fp, fn = 4, 3, 14
    assert abs(row.precision - tp / (tp + fp)) < 1e-9
    assert abs(row.recall - tp / (tp + fn)) < 1e-9
    assert abs(row.f1 - 2 * tp / (2 * tp + fp + fn)) < 1e-9  # harmonic mean: 8/25, not their mean
    assert abs(row.f1_any - 2 * tp / (2 * tp + fp + fn)) < 1e-9
    # window AUROC of feature 0 on held-out windows: positives {0.5, 0.5}, negatives {0.5, 0}:
    # two tied pairs count one half each -> (2 * 1 + 2 * 0.5) / 4
    assert abs(row.auroc - 0.75) < 1e-9
    assert row.n_motif_bases_test == 18 and row.n_windows_with_motif_test == 2


def test_catalog_contexts_equal_encoding_each_instances_sequence_alone(tmp_path, monkeypatch):
    """The contexts re-encode each needed sequence once, in groups of sequences: the marked
    contexts are those of encoding the top instance's own sequence alone, for every (feature,
    rank), with groups of several sequences and a sequence longer than a group."""
    import saeflow.dna.catalog as catalog

    rng = np.random.default_rng(3)
    lengths = [7, 12, 3, 40, 9, 15, 11, 5]
    d, F = 6, 24
    rows, seqs = [], []
    for s, n in enumerate(lengths):
        starts = np.sort(rng.choice(np.arange(60), n, replace=False)) if n else []
        seq = "".join(rng.choice(list("ACGT"), 70))
        seqs.append(dict(name=f"s{s}", sequence=seq))
        rows += [
            dict(seq=s, pos=i + 1, token_id=int(rng.integers(5, 9)), start=a, end=a + 3)
            for i, a in enumerate(starts)
        ]
    tokens = pd.DataFrame(rows)
    acts = rng.normal(size=(len(tokens), d)).astype(np.float16)
    store_dir = tmp_path / "acts"
    store_dir.mkdir()
    np.save(store_dir / "layer1.npy", acts)
    tokens.to_parquet(store_dir / "tokens.parquet")
    write_json(store_dir / "manifest.json", {"n_tokens": len(tokens), "d_model": d, "layers": [1]})
    torch.manual_seed(0)
    sae = TopKSAE(d, F, k=3)
    params = dict(
        top_n=4, n_contexts=3, context=2, svd_components=2, svd_threshold=0.5, svd_sample=100
    )
    monkeypatch.setattr(catalog, "CONTEXT_CHUNK", 30)  # groups of a few sequences; s3 alone
    store = ActivationStore(store_dir)
    sequences = pd.DataFrame(seqs)
    feats, ctx, _, _ = build_catalog(sae, store, 1, sequences, {}, params, {})
    assert len(ctx) > 2 * F and ctx.sequence.nunique() >= 6
    bounds = np.searchsorted(tokens.seq.to_numpy(), np.arange(len(lengths) + 1))
    x = np.asarray(store.layer(1), dtype=np.float32)
    for c in ctx.itertuples():
        s = int(c.sequence[1:])
        lo, hi = bounds[s], bounds[s + 1]
        with torch.no_grad():
            z = sae.encode(torch.from_numpy(x[lo:hi]))[:, c.feature].numpy()
        mask = np.zeros(70, bool)
        for a, b, zz in zip(tokens.start[lo:hi], tokens.end[lo:hi], z):
            if zz > 0:
                mask[a:b] = True
        assert c.context == mark_context(seqs[s]["sequence"], c.start, c.end, mask, 2), c
    ranks = ctx.groupby("feature")["rank"].apply(list)
    assert all(r == list(range(len(r))) for r in ranks)

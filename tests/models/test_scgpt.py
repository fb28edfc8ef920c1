"""scGPT without the scgpt package (saeflow.models.scgpt), on tiny random-weight checkpoints.

The checkpoints are written in the published layout by tests/tinymodels.py: a reference module
built from plain torch pieces the way scGPT's ``TransformerModel`` builds itself
(``scgpt/model/model.py``, with
``use_fast_transformer=False``: ``nn.TransformerEncoder`` of ``nn.TransformerEncoderLayer``;
``do_mvc=True`` as ``embed_data`` loads the whole-human model, plus the generative
``flag_encoder``),
saved as the in_proj layout, and renamed to flash-attn's ``Wqkv`` for the flash layout. The key
names are also written out by hand (``published_keys``) so that neither list comes from saeflow.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from tinymodels import SCGPT_ARGS as ARGS
from tinymodels import SCGPT_D as D
from tinymodels import SCGPT_D_HID as D_HID
from tinymodels import SCGPT_GENES as GENES
from tinymodels import SCGPT_H as H
from tinymodels import SCGPT_L as L
from tinymodels import SCGPT_VOCAB as VOCAB
from tinymodels import check_prefix_reuse
from tinymodels import scgpt_reference_model as reference_model
from tinymodels import scgpt_to_layout as to_layout
from tinymodels import write_scgpt_checkpoint as write_checkpoint

from saeflow.models.base import Capture, CellMatrix, Patch
from saeflow.models.scgpt import ScgptTokenizer, binning, load_scgpt
from saeflow.utils import SaeflowError


def published_keys(n_layers: int, layout: str) -> list[str]:
    """The tensors scGPT's TransformerModel forward + ExprDecoder read, as the published code names
    them."""
    keys = [
        "encoder.embedding.weight",
        "encoder.enc_norm.weight",
        "encoder.enc_norm.bias",
        "value_encoder.linear1.weight",
        "value_encoder.linear1.bias",
        "value_encoder.linear2.weight",
        "value_encoder.linear2.bias",
        "value_encoder.norm.weight",
        "value_encoder.norm.bias",
    ]
    attn = {
        "flash": [
            "self_attn.Wqkv.weight",
            "self_attn.Wqkv.bias",
            "self_attn.out_proj.weight",
            "self_attn.out_proj.bias",
        ],
        "impl": [
            "self_attn._impl.Wqkv.weight",
            "self_attn._impl.Wqkv.bias",
            "self_attn._impl.out_proj.weight",
            "self_attn._impl.out_proj.bias",
        ],
        "in_proj": [
            "self_attn.in_proj_weight",
            "self_attn.in_proj_bias",
            "self_attn.out_proj.weight",
            "self_attn.out_proj.bias",
        ],
    }[layout]
    for i in range(n_layers):
        keys += [
            f"transformer_encoder.layers.{i}.{k}"
            for k in attn
            + [
                "linear1.weight",
                "linear1.bias",
                "linear2.weight",
                "linear2.bias",
                "norm1.weight",
                "norm1.bias",
                "norm2.weight",
                "norm2.bias",
            ]
        ]
    keys += [
        "decoder.fc.0.weight",
        "decoder.fc.0.bias",
        "decoder.fc.2.weight",
        "decoder.fc.2.bias",
        "decoder.fc.4.weight",
        "decoder.fc.4.bias",
    ]
    return keys


#: heads saeflow does not run (MVC decoder "inner product" style, generative flag encoder)
UNUSED = [
    "flag_encoder.weight",
    "mvc_decoder.gene2query.weight",
    "mvc_decoder.gene2query.bias",
    "mvc_decoder.W.weight",
]


@pytest.fixture(scope="module")
def ref():
    return reference_model()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, ref):
    """{layout: checkpoint dir} of the same weights."""
    root = tmp_path_factory.mktemp("scgpt")
    return {
        lay: write_checkpoint(root / lay, to_layout(ref.state_dict(), lay))
        for lay in ("flash", "impl", "in_proj")
    }


@pytest.fixture(scope="module")
def adapter(ckpt):
    return load_scgpt(ckpt["flash"])


def make_cells(n_cells: int = 4, seed: int = 1) -> CellMatrix:
    """Raw counts over the vocabulary's genes plus two genes
    scGPT does not know; varying sparsity."""
    rng = np.random.default_rng(seed)
    symbols = np.array(GENES[:25] + ["NOT_A_GENE", "ENSG00000141510"] + GENES[25:], dtype=object)
    X = rng.poisson(1.5, size=(n_cells, len(symbols))).astype(np.float32)
    for i in range(n_cells):  # cells of different lengths -> padding
        X[i, rng.choice(len(symbols), size=min(len(symbols) - 2, 6 * i), replace=False)] = 0
    return CellMatrix(
        sp.csr_matrix(X), None, symbols, np.array([f"cell{i}" for i in range(n_cells)])
    )


# --- loading -----------------------------------------------------------------------------
def test_reference_has_the_published_key_names(ref):
    assert set(ref.state_dict()) == set(published_keys(L, "in_proj")) | set(UNUSED)


@pytest.mark.parametrize("layout", ["flash", "impl", "in_proj"])
def test_loader_accepts_published_keys_and_lists_unused(ckpt, layout, caplog):
    with caplog.at_level("INFO", logger="saeflow.models.scgpt"):
        ad = load_scgpt(ckpt[layout])
    assert sorted(ad.checkpoint_keys["used"]) == sorted(published_keys(L, layout))
    assert sorted(ad.checkpoint_keys["unused"]) == sorted(UNUSED)
    assert "mvc_decoder.W.weight" in caplog.text and "flag_encoder.weight" in caplog.text
    assert ad.family == "scgpt" and ad.kind == "cells"
    assert (ad.n_layers, ad.d_model, ad.n_heads, ad.d_head) == (L, D, H, D // H)


def test_all_layouts_match_the_torch_reference_forward(ckpt, ref):
    cells = make_cells()
    ads = {lay: load_scgpt(ckpt[lay]) for lay in ckpt}
    tb = ads["flash"].tokenize(cells)
    real = tb.attention_mask.bool()
    with torch.no_grad():
        hidden, logits = ref(tb.input_ids, tb.extra["values"], ~real)
    for lay, ad in ads.items():
        with torch.no_grad():
            out = ad.model(
                tb.input_ids, tb.extra["values"], tb.attention_mask, output_hidden_states=True
            )
        assert len(out.hidden_states) == L + 1
        for layer in range(L + 1):
            torch.testing.assert_close(
                out.hidden_states[layer][real], hidden[layer][real], atol=1e-5, rtol=1e-4
            )
        torch.testing.assert_close(out.logits[real], logits[real], atol=1e-5, rtol=1e-4)


# --- hooks and patches -------------------------------------------------------------------
def test_hook_captures_equal_the_models_hidden_states(adapter):
    tb = adapter.tokenize(make_cells())
    res = adapter.run(tb, Capture(resid=list(range(L + 1))))
    with torch.no_grad():
        out = adapter.model(
            tb.input_ids, tb.extra["values"], tb.attention_mask, output_hidden_states=True
        )
    for layer in range(L + 1):
        torch.testing.assert_close(res.resid[layer], out.hidden_states[layer], atol=0, rtol=0)
    torch.testing.assert_close(res.logits, out.logits, atol=0, rtol=0)
    assert res.logits.shape == tb.input_ids.shape
    hs = adapter.hidden_states(tb, [L])
    torch.testing.assert_close(hs[L], out.hidden_states[L], atol=0, rtol=0)


def test_padded_batch_equals_single_cells(adapter):
    cells = make_cells(5)
    tb = adapter.tokenize(cells)
    full = adapter.run(tb, Capture(resid=list(range(L + 1))))
    assert (tb.attention_mask == 0).any()  # the batch has padding
    for i in range(len(cells)):
        one = adapter.tokenize(cells[i : i + 1])
        n = one.input_ids.shape[1]
        assert int(tb.attention_mask[i].sum()) == n
        assert torch.equal(tb.input_ids[i, :n], one.input_ids[0]) and torch.equal(
            tb.extra["values"][i, :n], one.extra["values"][0]
        )
        alone = adapter.run(one, Capture(resid=list(range(L + 1))))
        for layer in range(L + 1):
            torch.testing.assert_close(
                full.resid[layer][i, :n], alone.resid[layer][0], atol=1e-5, rtol=1e-4
            )
        torch.testing.assert_close(full.logits[i, :n], alone.logits[0], atol=1e-5, rtol=1e-4)


def test_identity_patches_change_nothing_and_zeroing_a_head_does(adapter):
    tb = adapter.tokenize(make_cells())
    clean = adapter.run(tb)
    same = adapter.run(
        tb,
        patch=Patch(
            resid={1: lambda t: t, L: lambda t: t.clone()},
            heads={(1, 0): lambda t: t, (L, H - 1): lambda t: t.clone()},
        ),
    )
    torch.testing.assert_close(same.logits, clean.logits, atol=0, rtol=0)
    zeroed = adapter.run(
        tb, patch=Patch(heads={(1, 2): torch.zeros_like}), capture=Capture(head_out=[1])
    )
    assert (zeroed.head_out[1][..., 2, :] == 0).all()
    real = tb.attention_mask.bool()
    assert (zeroed.logits - clean.logits)[real].abs().max() > 1e-4
    # patching the residual stream of layer 0 with zeros changes the output too
    assert (adapter.run(tb, patch=Patch(resid={0: torch.zeros_like})).logits - clean.logits)[
        real
    ].abs().max() > 1e-4


def test_reused_prefix_gives_the_full_passes_outputs(adapter):
    check_prefix_reuse(adapter, lambda: adapter.tokenize(make_cells()))


def test_attention_probabilities_and_head_sites(adapter):
    tb = adapter.tokenize(make_cells())
    B, T = tb.input_ids.shape
    res = adapter.run(tb, Capture(resid=[0, 1], attn=[1, 2], qkv=[1], head_out=[1], mlp=[2]))
    pad = tb.attention_mask == 0
    for layer in (1, 2):
        a = res.attn[layer]
        assert a.shape == (B, H, T, T)
        torch.testing.assert_close(a.sum(-1), torch.ones(B, H, T), atol=1e-5, rtol=0)
        assert (a * pad[:, None, None, :] == 0).all() and pad.any()  # no weight on pad keys
    assert res.q[1].shape == (B, H, T, D // H) and res.head_out[1].shape == (B, T, H, D // H)
    assert res.mlp[2].shape == (B, T, D_HID) and (res.mlp[2] >= 0).all()  # after the ReLU
    # head_weights: q of block 1 = its input (post-norm: residual layer 0) times W_Q (+ bias)
    w = adapter.head_weights(1)
    att = adapter.blocks()[0].self_attn
    bq, bv = att.Wqkv.bias[:D].reshape(H, D // H), att.Wqkv.bias[2 * D :].reshape(H, D // H)
    with torch.no_grad():
        q = torch.einsum("btd,hde->bhte", res.resid[0], w["W_Q"]) + bq[None, :, None, :]
        v = torch.einsum("btd,hde->bhte", res.resid[0], w["W_V"]) + bv[None, :, None, :]
        torch.testing.assert_close(q, res.q[1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(v, res.v[1], atol=1e-5, rtol=1e-4)
        # W_O: the output projection is the sum over heads of head_out[h] @ W_O[h]
        o = torch.einsum("bthe,hed->btd", res.head_out[1], w["W_O"]) + att.out_proj.bias
        torch.testing.assert_close(
            o, att.out_proj(res.head_out[1].reshape(B, T, D)), atol=1e-5, rtol=1e-4
        )


# --- binning and tokenising ---------------------------------------------------------------
def test_binning_known_answer():
    # nonzero values 1..7, n_bins 5: edges = quantiles at 0, 1/3, 2/3, 1 = [1, 3, 5, 7];
    # np.digitize -> 1,1,2,2,3,3,4; values on an edge have left - right = 1, so no randomness.
    row = np.array([0, 1, 2, 3, 0, 4, 5, 6, 7], dtype=float)
    expect = [0, 1, 1, 2, 0, 2, 3, 3, 4]
    assert binning(row, 5, np.random.default_rng(0)).tolist() == expect
    assert binning(row, 5, tie_break="left").tolist() == expect
    assert binning(np.zeros(4), 51).tolist() == [0, 0, 0, 0]
    # distinct values use the full range 1..n_bins-1
    b = binning(np.arange(1.0, 8.0), 51, np.random.default_rng(0))
    assert b.min() == 1 and b.max() == 50 and (np.diff(b) > 0).all()


def test_binning_spreads_ties_like_digitize_both():
    # 300 ones and one 5, n_bins 5: edges [1, 1, 1, 5]; a 1 sits on three edges (left digit 3,
    # right digit 0) so scGPT's _digitize(side="both") spreads it uniformly over bins 1..3.
    row = np.array([1.0] * 300 + [5.0])
    b = binning(row, 5, np.random.default_rng(0))
    assert b[-1] == 4 and set(b[:-1].tolist()) == {1, 2, 3}
    assert min(np.bincount(b[:-1])[1:]) > 60
    assert binning(row, 5, tie_break="left")[:-1].tolist() == [3] * 300
    assert (
        binning(row, 5, np.random.default_rng(7)).tolist()
        == binning(row, 5, np.random.default_rng(7)).tolist()
    )


def test_tokenize_cells(adapter):
    cells = make_cells(3)
    X = cells.X.toarray()
    tb = adapter.tokenize(cells)
    id2tok = {i: t for t, i in VOCAB.items()}
    assert tb.offsets.shape == (*tb.input_ids.shape, 2) and not tb.offsets.any()
    for b in range(3):
        n = int(tb.attention_mask[b].sum())
        ids = tb.input_ids[b].tolist()
        assert ids[0] == VOCAB["<cls>"] and ids[n:] == [VOCAB["<pad>"]] * (len(ids) - n)
        # pad_value
        assert tb.extra["values"][b, 0] == -2 and (tb.extra["values"][b, n:] == -2).all()
        assert tb.special[b].tolist() == [True] + [False] * (n - 1) + [True] * (len(ids) - n)
        assert tb.genes[b, 0] == "" and (tb.genes[b, n:] == "").all()
        # the genes are the cell's nonzero in-vocabulary genes, in column order; they map back
        expect = [s for s, c in zip(cells.gene_symbols, X[b]) if c > 0 and s in VOCAB]
        assert tb.genes[b, 1:n].tolist() == expect
        assert [id2tok[i] for i in ids[1:n]] == expect
        assert not {"NOT_A_GENE", "ENSG00000141510"} & set(tb.genes[b].tolist())
        vals = tb.extra["values"][b, 1:n].numpy()
        assert vals.min() >= 1 and vals.max() <= 50 and (vals == vals.round()).all()
        # values are the cell's bins: a higher count never gets a lower bin (ties are spread at
        # random)
        counts = np.array([X[b][list(cells.gene_symbols).index(g)] for g in expect])
        lower = counts[:, None] < counts[None, :]
        assert (vals[:, None] <= vals[None, :])[lower].all() and vals[counts.argmax()] == 50
    # reproducible
    again = adapter.tokenize(cells)
    assert torch.equal(again.input_ids, tb.input_ids) and torch.equal(
        again.extra["values"], tb.extra["values"]
    )


def test_tokenizer_hand_made_cell():
    tok = ScgptTokenizer(VOCAB, pad_value=-2, n_bins=5)
    symbols = np.array(
        ["CD3E", "XIST_NOT_IN_VOCAB", "CD4", "CD8A", "MS4A1", "LYZ", "NKG7", "GNLY", "CD14"],
        dtype=object,
    )
    # in vocab: 1,2,3,0,4,5,6,7 as above
    X = np.array([[1, 9, 2, 3, 0, 4, 5, 6, 7]], dtype=np.float32)
    tb = tok(CellMatrix(X, None, symbols, np.array(["c"])))
    assert tb.genes[0].tolist() == ["", "CD3E", "CD4", "CD8A", "LYZ", "NKG7", "GNLY", "CD14"]
    assert tb.extra["values"][0].tolist() == [-2, 1, 1, 2, 2, 3, 3, 4]


def test_max_length_selection(adapter):
    cells = make_cells(2, seed=5)
    full = adapter.tokenize(cells)
    cut = adapter.tokenize(cells, max_length=8)
    assert cut.input_ids.shape == (2, 8) and (cut.input_ids[:, 0] == VOCAB["<cls>"]).all()
    for b in range(2):
        n = int(full.attention_mask[b].sum())
        bins = dict(zip(full.genes[b, 1:n], full.extra["values"][b, 1:n].tolist()))
        kept = cut.genes[b, 1:].tolist()
        assert len(set(kept)) == 7 and set(kept) <= set(bins)
        # binned over all the cell's genes before the cut, as scGPT's collator does
        assert cut.extra["values"][b, 1:].tolist() == [bins[g] for g in kept]
    again = adapter.tokenize(cells[1:2], max_length=8)  # same genes whatever the batch
    assert again.genes[0].tolist() == cut.genes[1].tolist()
    top = ScgptTokenizer(VOCAB, selection="top", tie_break="left")(cells[0:1], max_length=4)
    X = cells.X.toarray()[0]
    top_counts = sorted(
        (X[list(cells.gene_symbols).index(g)] for g in top.genes[0, 1:]), reverse=True
    )
    assert top_counts == sorted(X[[s in VOCAB for s in cells.gene_symbols]], reverse=True)[:3]


# --- errors and variants -------------------------------------------------------------------
@pytest.mark.parametrize("missing", ["best_model.pt", "vocab.json", "args.json"])
def test_missing_checkpoint_file(tmp_path, ref, missing):
    d = write_checkpoint(tmp_path / "ck", to_layout(ref.state_dict(), "flash"))
    (d / missing).unlink()
    with pytest.raises(SaeflowError, match=f"missing {missing}"):
        load_scgpt(d)
    with pytest.raises(SaeflowError, match="not a directory"):
        load_scgpt(tmp_path / "nope")


def test_missing_tensor_and_bad_args(tmp_path, ref):
    sd = to_layout(ref.state_dict(), "flash")
    del sd["transformer_encoder.layers.1.norm2.bias"]
    with pytest.raises(SaeflowError, match="transformer_encoder.layers.1.norm2.bias"):
        load_scgpt(write_checkpoint(tmp_path / "a", sd))
    with pytest.raises(SaeflowError, match="pad_value"):
        load_scgpt(
            write_checkpoint(
                tmp_path / "b",
                to_layout(ref.state_dict(), "flash"),
                args={k: v for k, v in ARGS.items() if k != "pad_value"},
            )
        )
    with pytest.raises(SaeflowError, match="nlayers=3"):
        load_scgpt(
            write_checkpoint(
                tmp_path / "c", to_layout(ref.state_dict(), "flash"), args=dict(ARGS, nlayers=3)
            )
        )


def test_cells_without_gene_symbols(adapter):
    cells = make_cells(2)
    with pytest.raises(SaeflowError, match="gene symbols"):
        adapter.tokenize(
            CellMatrix(cells.X, np.array(["ENSG1"] * cells.X.shape[1]), None, cells.names)
        )
    with pytest.raises(SaeflowError, match="none of the"):
        adapter.tokenize(
            CellMatrix(
                cells.X, None, np.array([f"ENSG{i}" for i in range(cells.X.shape[1])]), cells.names
            )
        )


def test_vocab_without_specials_gets_them_appended(tmp_path, ref):
    # embed_data appends <pad>, <cls>, <eoc> when vocab.json lacks them; the embedding covers them
    vocab = {g: i for i, g in enumerate(GENES)}
    ad = load_scgpt(
        write_checkpoint(tmp_path / "v", to_layout(ref.state_dict(), "flash"), vocab=vocab)
    )
    assert ad.tokenizer.pad_id == len(GENES) and ad.tokenizer.cls_id == len(GENES) + 1
    assert ad.tokenizer.vocab["<eoc>"] == len(GENES) + 2
    # the feature catalog's vocabulary is the adapter's, specials included
    from saeflow.models import load_vocab

    assert load_vocab(tmp_path / "v") == {i: t for t, i in ad.tokenizer.vocab.items()}
    assert load_vocab(tmp_path / "v", family="scgpt")[len(GENES) + 1] == "<cls>"


def test_pre_norm_follows_the_published_layer(tmp_path, ref):
    ad = load_scgpt(
        write_checkpoint(
            tmp_path / "p", to_layout(ref.state_dict(), "flash"), args=dict(ARGS, pre_norm=True)
        )
    )
    tb = ad.tokenize(make_cells(2))
    res = ad.run(tb, Capture(resid=[0, 1]))
    blk = ad.blocks()[0]
    x, pad = res.resid[0], tb.attention_mask == 0
    with torch.no_grad():  # FlashTransformerEncoderLayer, norm_scheme "pre", written out
        x = blk.norm1(x)
        x = x + blk.self_attn(x, pad)[0]
        x = blk.norm2(x)
        x = x + blk.linear2(torch.relu(blk.linear1(x)))
    torch.testing.assert_close(res.resid[1], x, atol=1e-6, rtol=1e-5)

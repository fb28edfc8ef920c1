"""DNABERT-2 in saeflow's own implementation (saeflow.models.dnabert2), on tiny random checkpoints.

Each checkpoint is written in the hub's layout (config.json, weights, tokenizer.json) by
tests/tinymodels.py, with a BPE tokenizer trained there on random DNA the way the DNABERT-2
authors trained theirs (BPE with [UNK], Whitespace pre-tokenizer, specials [UNK] [CLS] [SEP]
[PAD] [MASK], [CLS] $A [SEP]).
The block arithmetic is recomputed in this file from the captured tensors and the weights, and
the key names and ALiBi slopes are written out by hand from the published bert_layers.py.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tinymodels import DNABERT2_LAYERS as N_LAYERS
from tinymodels import check_prefix_reuse
from tinymodels import write_dnabert2_checkpoint as write_checkpoint

from saeflow.models.base import Capture, Patch
from saeflow.models.dnabert2 import alibi_bias, alibi_slopes, load_dnabert2
from saeflow.utils import SaeflowError

# The published checkpoint's key names for a 2-layer model (BertForMaskedLM of bert_layers.py:
# BertEmbeddings without position embeddings, BertUnpadSelfAttention.Wqkv, BertSelfOutput,
# BertGatedLinearUnitMLP, no pooler, BertOnlyMLMHead with a biased decoder).
PUBLISHED_KEYS = [
    "bert.embeddings.word_embeddings.weight",
    "bert.embeddings.token_type_embeddings.weight",
    "bert.embeddings.LayerNorm.weight",
    "bert.embeddings.LayerNorm.bias",
    "bert.encoder.layer.0.attention.self.Wqkv.weight",
    "bert.encoder.layer.0.attention.self.Wqkv.bias",
    "bert.encoder.layer.0.attention.output.dense.weight",
    "bert.encoder.layer.0.attention.output.dense.bias",
    "bert.encoder.layer.0.attention.output.LayerNorm.weight",
    "bert.encoder.layer.0.attention.output.LayerNorm.bias",
    "bert.encoder.layer.0.mlp.gated_layers.weight",
    "bert.encoder.layer.0.mlp.wo.weight",
    "bert.encoder.layer.0.mlp.wo.bias",
    "bert.encoder.layer.0.mlp.layernorm.weight",
    "bert.encoder.layer.0.mlp.layernorm.bias",
    "bert.encoder.layer.1.attention.self.Wqkv.weight",
    "bert.encoder.layer.1.attention.self.Wqkv.bias",
    "bert.encoder.layer.1.attention.output.dense.weight",
    "bert.encoder.layer.1.attention.output.dense.bias",
    "bert.encoder.layer.1.attention.output.LayerNorm.weight",
    "bert.encoder.layer.1.attention.output.LayerNorm.bias",
    "bert.encoder.layer.1.mlp.gated_layers.weight",
    "bert.encoder.layer.1.mlp.wo.weight",
    "bert.encoder.layer.1.mlp.wo.bias",
    "bert.encoder.layer.1.mlp.layernorm.weight",
    "bert.encoder.layer.1.mlp.layernorm.bias",
    "cls.predictions.transform.dense.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias",
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
]

SEQS = [
    "ACGTTGCAAGGCTTACGATCGATCGGATAC",
    "TTGACCA",
    "GATTACAGATTACAGGGCCCAAATTTACGTACGTAGCTAGCTAGGA",
]


@pytest.fixture(scope="module", params=[(32, 4), (36, 3)], ids=["4heads", "3heads"])
def ckpt(request, tmp_path_factory):
    hidden, heads = request.param
    d = tmp_path_factory.mktemp(f"dnabert2_{heads}")
    sd = write_checkpoint(d, hidden, heads)
    return d, sd


@pytest.fixture(scope="module")
def ad(ckpt):
    return load_dnabert2(ckpt[0])


def test_load_vocab_is_the_adapters_bpe_vocabulary(ad, ckpt):
    from saeflow.models import detect_family, load_vocab

    want = {i: t for t, i in ad.tokenizer.get_vocab().items()}
    assert detect_family(ckpt[0]) == "dnabert2"
    assert load_vocab(ckpt[0]) == want and load_vocab(ckpt[0], family="dnabert2") == want


def test_state_dict_has_the_published_names_and_shapes(ad, ckpt):
    sd = ad.model.state_dict()
    assert sorted(sd) == sorted(PUBLISHED_KEYS)
    d = ad.d_model
    d_ff, V = ad.model.config.intermediate_size, ad.model.config.vocab_size
    assert sd["bert.encoder.layer.0.attention.self.Wqkv.weight"].shape == (3 * d, d)
    assert sd["bert.encoder.layer.1.mlp.gated_layers.weight"].shape == (2 * d_ff, d)
    assert sd["bert.encoder.layer.1.mlp.wo.weight"].shape == (d, d_ff)
    assert sd["cls.predictions.decoder.bias"].shape == (V,)
    m = ad.model
    assert m.cls.predictions.decoder.weight is m.bert.embeddings.word_embeddings.weight  # tied
    for k, v in ckpt[1].items():  # the file's weights were loaded
        assert torch.equal(sd[k], v), k


def test_alibi_slopes_equal_the_published_values():
    # written out from the published recursion: 2^-(8/n)(i+1) for n = 2^a; otherwise the slopes
    # of the largest power of 2 below n, then every other slope of twice that power
    expected = {
        4: [2**-2, 2**-4, 2**-6, 2**-8],
        8: [2**-k for k in range(1, 9)],
        3: [2**-4, 2**-8, 2**-2],
        6: [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3],
        12: [2**-k for k in range(1, 9)] + [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5],
    }
    for n, slopes in expected.items():
        np.testing.assert_allclose(alibi_slopes(n), slopes, rtol=1e-12, err_msg=f"{n} heads")
    for n in (3, 4, 12):
        bias = alibi_bias(n, 6)
        assert bias.shape == (1, n, 6, 6)
        ref = torch.tensor(
            [[[-expected[n][h] * abs(i - j) for j in range(6)] for i in range(6)] for h in range(n)]
        )
        torch.testing.assert_close(bias[0], ref.float(), rtol=1e-6, atol=0)


def test_attention_uses_alibi_over_real_keys(ckpt):
    """With q = 0 every score is 0, so the probabilities are softmax(ALiBi) over the real keys."""
    ad = load_dnabert2(ckpt[0])
    d = ad.d_model
    for block in ad.blocks():
        with torch.no_grad():
            block.attention.self.Wqkv.weight[:d] = 0
            block.attention.self.Wqkv.bias[:d] = 0
    tb = ad.tokenize(SEQS[:2])
    res = ad.run(tb, Capture(attn=[1, 2]), logits=False)
    H, T = ad.n_heads, tb.input_ids.shape[1]
    slopes = alibi_slopes(H)
    for b in range(2):
        n = int(tb.attention_mask[b].sum())
        dist = (torch.arange(n)[None, :] - torch.arange(n)[:, None]).abs().double()
        for h in range(H):
            ref = torch.softmax(-slopes[h] * dist, dim=-1)
            for L in (1, 2):
                p = res.attn[L][b, h]
                torch.testing.assert_close(p[:n, :n].double(), ref, rtol=1e-5, atol=1e-6)
                assert (p[:, n:] == 0).all()
    assert res.attn[1].shape == (2, H, T, T)


def test_padded_batch_equals_each_sequence_alone(ad):
    tb = ad.tokenize(SEQS)
    layers = list(range(N_LAYERS + 1))
    batch = ad.run(tb, Capture(resid=layers))
    assert tb.attention_mask.sum(1).tolist() != [tb.input_ids.shape[1]] * 3  # there is padding
    for b, s in enumerate(SEQS):
        one = ad.tokenize([s])
        alone = ad.run(one, Capture(resid=layers))
        n = one.input_ids.shape[1]
        assert torch.equal(tb.input_ids[b, :n], one.input_ids[0])
        torch.testing.assert_close(batch.logits[b, :n], alone.logits[0], rtol=1e-5, atol=1e-5)
        for L in layers:
            torch.testing.assert_close(
                batch.resid[L][b, :n], alone.resid[L][0], rtol=1e-5, atol=1e-5
            )


@torch.no_grad()
def test_captures_match_hidden_states_and_the_published_block(ad):
    """Every capture against output_hidden_states and against the block recomputed here by hand."""
    m, cfg = ad.model, ad.model.config
    tb = ad.tokenize(SEQS)
    L_all = list(range(1, N_LAYERS + 1))
    res = ad.run(tb, Capture(resid=[0] + L_all, attn=L_all, qkv=L_all, head_out=L_all, mlp=L_all))
    with torch.inference_mode():
        out = m(
            input_ids=tb.input_ids,
            attention_mask=tb.attention_mask,
            output_hidden_states=True,
            output_attentions=True,
        )
    assert len(out.hidden_states) == N_LAYERS + 1
    for L in range(N_LAYERS + 1):
        assert torch.equal(res.resid[L], out.hidden_states[L]), L
    assert torch.equal(res.logits, out.logits)
    B, T = tb.input_ids.shape
    H, dh, d, d_ff = ad.n_heads, ad.d_head, ad.d_model, cfg.intermediate_size
    real = tb.attention_mask.bool()

    def ln(x, mod):
        return F.layer_norm(x, (d,), mod.weight, mod.bias, mod.eps)

    for L in L_all:
        blk = m.bert.encoder.layer[L - 1]
        x = res.resid[L - 1]
        assert torch.equal(res.attn[L], out.attentions[L - 1])
        qkv = x @ blk.attention.self.Wqkv.weight.T + blk.attention.self.Wqkv.bias
        for i, name in enumerate("qkv"):  # (t h d) layout: q block, k block, v block, head-major
            ref = qkv[..., i * d : (i + 1) * d].reshape(B, T, H, dh).transpose(1, 2)
            torch.testing.assert_close(getattr(res, name)[L], ref, rtol=1e-5, atol=1e-5)
        # head outputs = probabilities x values, (B, T, H, dh)
        ref_heads = (res.attn[L] @ res.v[L]).transpose(1, 2)
        torch.testing.assert_close(res.head_out[L], ref_heads, rtol=1e-5, atol=1e-5)
        # post-LN attention output, then the GLU: GELU(first half) * second half
        att = blk.attention.output
        a = ln(
            res.head_out[L].reshape(B, T, d) @ att.dense.weight.T + att.dense.bias + x,
            att.LayerNorm,
        )
        g = a @ blk.mlp.gated_layers.weight.T
        glu = F.gelu(g[..., :d_ff]) * g[..., d_ff:]
        torch.testing.assert_close(res.mlp[L], glu, rtol=1e-5, atol=1e-5)
        nxt = ln(glu @ blk.mlp.wo.weight.T + blk.mlp.wo.bias + a, blk.mlp.layernorm)
        torch.testing.assert_close(res.resid[L][real], nxt[real], rtol=1e-5, atol=1e-5)
        # per-head weights reproduce q/k/v (plus bias) and the output projection
        w = ad.head_weights(L)
        assert w["W_Q"].shape == (H, d, dh) and w["W_O"].shape == (H, dh, d)
        bias = blk.attention.self.Wqkv.bias
        for i, (name, key) in enumerate((("q", "W_Q"), ("k", "W_K"), ("v", "W_V"))):
            for h in range(H):
                ref = x @ w[key][h] + bias[i * d + h * dh : i * d + (h + 1) * dh]
                torch.testing.assert_close(getattr(res, name)[L][:, h], ref, rtol=1e-5, atol=1e-5)
        proj = sum(res.head_out[L][:, :, h] @ w["W_O"][h] for h in range(H)) + att.dense.bias
        torch.testing.assert_close(
            proj, att.dense(res.head_out[L].reshape(B, T, d)), rtol=1e-5, atol=1e-5
        )
    # MLM head: dense, GELU, LayerNorm, decoder tied to the word embeddings plus its own bias
    p = m.cls.predictions
    t = F.layer_norm(
        F.gelu(res.resid[N_LAYERS] @ p.transform.dense.weight.T + p.transform.dense.bias),
        (d,),
        p.transform.LayerNorm.weight,
        p.transform.LayerNorm.bias,
        1e-12,
    )
    ref_logits = t @ m.bert.embeddings.word_embeddings.weight.T + p.decoder.bias
    torch.testing.assert_close(res.logits, ref_logits, rtol=1e-5, atol=1e-5)


def test_attention_rows_sum_to_one_and_padded_keys_get_zero(ad):
    tb = ad.tokenize(SEQS)
    res = ad.run(tb, Capture(attn=[1, 2]), logits=False)
    pad = ~tb.attention_mask.bool()
    for L in (1, 2):
        p = res.attn[L]
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]), rtol=0, atol=1e-5)
        assert (p.masked_select(pad[:, None, None, :].expand_as(p)) == 0).all()


def test_patching_a_layer_or_head_with_itself_changes_nothing_and_zeroing_a_head_does(ad):
    tb = ad.tokenize(SEQS)
    clean = ad.run(tb, Capture(head_out=[1]))
    for L in range(N_LAYERS + 1):
        same = ad.run(tb, patch=Patch(resid={L: lambda t: t.clone()}))
        assert torch.equal(same.logits, clean.logits), L
    for L in (1, 2):
        for h in range(ad.n_heads):
            assert torch.equal(
                ad.run(tb, patch=Patch(heads={(L, h): lambda t: t.clone()})).logits, clean.logits
            )
    zeroed = ad.run(tb, Capture(head_out=[1]), Patch(heads={(1, 0): torch.zeros_like}))
    assert not torch.allclose(zeroed.logits, clean.logits)
    assert (zeroed.head_out[1][:, :, 0] == 0).all()
    assert torch.equal(zeroed.head_out[1][:, :, 1:], clean.head_out[1][:, :, 1:])


def test_reused_prefix_gives_the_full_passes_outputs(ad):
    check_prefix_reuse(ad, lambda: ad.tokenize(SEQS))


def test_offsets_map_every_bpe_token_to_its_bases(ad):
    seqs = SEQS + ["acgtNNacgtaa", "A"]
    tok = ad.tokenizer
    for max_length in (None, 6):
        tb = ad.tokenize(seqs, max_length=max_length)
        if max_length:
            assert tb.input_ids.shape[1] <= max_length
        for b, s in enumerate(seqs):
            s = s.upper()
            toks = tok.convert_ids_to_tokens(tb.input_ids[b].tolist())
            real = np.flatnonzero(~tb.special[b])
            assert toks[0] == "[CLS]" and tb.special[b, 0] and tuple(tb.offsets[b, 0]) == (0, 0)
            assert (tb.offsets[b][tb.special[b]] == 0).all()
            assert toks[real[-1] + 1] == "[SEP]"
            cursor = 0
            for t in real:
                start, end = tb.offsets[b, t]
                assert start == cursor, (s, toks)  # contiguous, nothing skipped
                if toks[t] == "[UNK]":
                    assert s[start:end] == "N"
                else:
                    assert s[start:end] == toks[t]
                cursor = end
            if max_length is None:
                assert cursor == len(s)
    # offsets the tokenizer got wrong are re-derived from the token strings
    tb = ad.tokenize(SEQS)
    broken = tb.offsets.copy()
    broken[~tb.special] += 1
    ad._fix_offsets([s.upper() for s in SEQS], tb.input_ids.numpy(), broken, tb.special)
    assert np.array_equal(broken, tb.offsets)


def test_safetensors_without_the_tied_decoder_loads_the_same_model(tmp_path, ad):
    d = tmp_path / "st"
    hidden, heads = ad.d_model, ad.n_heads
    write_checkpoint(d, hidden, heads, fmt="safetensors")
    st = load_dnabert2(d)
    tb = ad.tokenize(SEQS)
    assert torch.equal(st.run(tb).logits, ad.run(tb).logits)


def test_clear_errors(tmp_path, ckpt):
    src = ckpt[0]
    with pytest.raises(SaeflowError, match="not a directory"):
        load_dnabert2(tmp_path / "nope")
    d = tmp_path / "m"
    d.mkdir()
    with pytest.raises(SaeflowError, match="no config.json"):
        load_dnabert2(d)
    (d / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(SaeflowError, match="no tokenizer.json"):
        load_dnabert2(d)
    (d / "tokenizer.json").write_text((src / "tokenizer.json").read_text())
    with pytest.raises(SaeflowError, match="no weights"):
        load_dnabert2(d)
    sd = torch.load(src / "pytorch_model.bin", weights_only=True)
    del sd["bert.encoder.layer.1.mlp.wo.bias"]
    torch.save(sd, d / "pytorch_model.bin")
    with pytest.raises(
        SaeflowError, match=r"missing key\(s\): \['bert\.encoder\.layer\.1\.mlp\.wo\.bias'\]"
    ):
        load_dnabert2(d)
    sd = torch.load(src / "pytorch_model.bin", weights_only=True)
    sd["bert.encoder.layer.0.attention.self.query.weight"] = sd.pop(
        "bert.encoder.layer.0.attention.self.Wqkv.weight"
    )
    torch.save(sd, d / "pytorch_model.bin")
    with pytest.raises(SaeflowError, match="standard Hugging Face BERT"):
        load_dnabert2(d)
    cfg = json.loads((src / "config.json").read_text())
    cfg["intermediate_size"] += 4
    (d / "config.json").write_text(json.dumps(cfg))
    torch.save(torch.load(src / "pytorch_model.bin", weights_only=True), d / "pytorch_model.bin")
    with pytest.raises(SaeflowError, match="shapes do not match config.json"):
        load_dnabert2(d)

"""DNABERT, Nucleotide Transformer v2 and Geneformer adapters: tokenization, hooks, patches,
loading.

Every model here is a tiny random-weight model built (tests/tinymodels.py) from the family's
config class with the released checkpoints' layout (config keys, vocabulary / dictionary files),
written to a tmp dir and loaded back with ``load_model(..., family=...)``. No network.
"""

import itertools
import json
import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from tinymodels import (
    check_prefix_reuse,
    gene,
    make_dnabert_dir,
    make_geneformer_dir,
    make_nt_dir,
    nt_config,
)

from saeflow.models import FAMILIES, detect_family, load_model, load_vocab
from saeflow.models import registry as reg
from saeflow.models.base import Capture, CellMatrix, Patch
from saeflow.utils import SaeflowError


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    out = {}
    for k in (3, 6):
        out[f"dnabert{k}"] = make_dnabert_dir(tmp_path_factory.mktemp(f"dnabert{k}"), k)
    out["nt"], _ = make_nt_dir(tmp_path_factory.mktemp("nt"))
    for v in ("V1", "V2"):
        out[f"geneformer_{v}"], _, _ = make_geneformer_dir(tmp_path_factory.mktemp(f"gf{v}"), v)
    return out


@pytest.fixture(scope="module")
def adapters(dirs):
    fam = {
        "dnabert3": "dnabert",
        "dnabert6": "dnabert",
        "nt": "nucleotide_transformer",
        "geneformer_V1": "geneformer",
        "geneformer_V2": "geneformer",
    }
    return {name: load_model(dirs[name], family=fam[name]) for name in dirs}


SEQS = ["ACGTACGGTCAANACGTTTAGGCATTACG", "ggcatTACGATCGA", "ACGTNNACGTACGTACGTAAC"]


def cells(n_genes=30, seed=0, n_cells=3):
    rng = np.random.default_rng(seed)
    X = rng.poisson(2.0, size=(n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < 0.6)
    X[2, :] = 0
    X[2, :4] = [3, 1, 0, 2]  # a cell with few genes: padding in the batch
    return CellMatrix(
        sp.csr_matrix(X.astype(np.float32)),
        np.array([gene(i) for i in range(n_genes)], dtype=object),
        None,
        np.array([f"c{i}" for i in range(n_cells)]),
    )


def batch_for(name, ad):
    return ad.tokenize(cells()) if name.startswith("geneformer") else ad.tokenize(SEQS)


# --- the hook interface, every family ------------------------------------------------------------
NAMES = ["dnabert6", "nt", "geneformer_V1", "geneformer_V2"]


@pytest.mark.parametrize("name", NAMES)
def test_hooks_captures_and_patches(adapters, name):
    ad = adapters[name]
    tb = batch_for(name, ad)
    B, T = tb.input_ids.shape
    N, H, dh = ad.n_layers, ad.n_heads, ad.d_head
    assert N == 2 and ad.d_model == 16
    # residual stream of every layer = output_hidden_states, exactly
    res = ad.run(tb, Capture(resid=list(range(N + 1))))
    with torch.no_grad():
        ref = ad.model(
            input_ids=tb.input_ids, attention_mask=tb.attention_mask, output_hidden_states=True
        )
    assert len(ref.hidden_states) == N + 1
    for L in range(N + 1):
        assert torch.equal(res.resid[L], ref.hidden_states[L]), f"layer {L}"
    assert torch.equal(res.logits, ref.logits)
    # identity patches change nothing; zeroing a head does
    ident = ad.run(
        tb,
        patch=Patch(
            resid={L: (lambda h: h) for L in range(N + 1)},
            heads={(1, 0): lambda x: x, (N, H - 1): lambda x: x},
        ),
    )
    assert torch.equal(ident.logits, ref.logits)
    zero = ad.run(tb, patch=Patch(heads={(1, 1): torch.zeros_like}))
    assert not torch.allclose(zero.logits, ref.logits)
    replaced = ad.run(tb, Capture(resid=[1]), Patch(resid={1: torch.zeros_like}))
    assert torch.count_nonzero(replaced.resid[1]) == 0 and not torch.allclose(
        replaced.logits, ref.logits
    )
    # internals
    r = ad.run(tb, Capture(attn=[1, N], qkv=[1, N], head_out=[1], mlp=[1, N]))
    for L in (1, N):
        assert r.attn[L].shape == (B, H, T, T)
        torch.testing.assert_close(r.attn[L].sum(-1), torch.ones(B, H, T))
        keys_masked = r.attn[L] * (1 - tb.attention_mask)[:, None, None, :]
        assert keys_masked.abs().max() < 1e-6  # padding keys get no attention
        for x in (r.q[L], r.k[L], r.v[L]):
            assert x.shape == (B, H, T, dh)
        assert r.mlp[L].shape == (B, T, ad.model.config.intermediate_size)
    assert r.head_out[1].shape == (B, T, H, dh)
    # eager vs sdpa attention
    torch.testing.assert_close(r.logits, ref.logits, atol=1e-4, rtol=1e-4)
    w = ad.head_weights(1)
    assert w["W_Q"].shape == (H, 16, dh) and w["W_O"].shape == (H, dh, 16)


@pytest.mark.parametrize("name", NAMES)
def test_reused_prefix_gives_the_full_passes_outputs(adapters, name):
    check_prefix_reuse(adapters[name], lambda: batch_for(name, adapters[name]))


def test_reused_prefix_of_the_toy_lm(tiny_model_dir):
    ad = load_model(tiny_model_dir)
    check_prefix_reuse(ad, lambda: ad.tokenize(SEQS))


# --- DNABERT --------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [3, 4, 5, 6])
def test_dnabert_kmers_map_back_to_bases(tmp_path, k):
    from saeflow.models.dnabert import KmerTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
        "".join(p) for p in itertools.product("ATCG", repeat=k)
    ]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = KmerTokenizer.from_file(tmp_path / "vocab.txt")
    assert tok.k == k
    tb = tok.encode(SEQS + ["AC"], limit=512)
    for b, s in enumerate(SEQS + ["AC"]):
        s = s.upper()
        toks = tok.convert_ids_to_tokens(tb.input_ids[b][tb.attention_mask[b] == 1])
        n = max(len(s) - k + 1, 0)
        assert toks[0] == "[CLS]" and toks[-1] == "[SEP]" and len(toks) == n + 2
        genuine = np.flatnonzero(~tb.special[b])
        assert len(genuine) == n
        for i, t in enumerate(genuine):
            start, end = tb.offsets[b, t]
            assert (start, end) == (i, i + k)  # the i-th k-mer covers bases [i, i+k)
            if "N" in s[start:end]:
                assert toks[t] == "[UNK]"
            else:
                assert toks[t] == s[start:end]
        assert (tb.offsets[b][tb.special[b]] == 0).all()
    assert tb.special[3].all()  # shorter than k: only [CLS] [SEP] (and padding)


def test_dnabert_loads_and_tokenizes(dirs, adapters):
    ad = adapters["dnabert6"]
    assert ad.family == "dnabert" and ad.kind == "dna" and ad.tokenizer.k == 6
    assert adapters["dnabert3"].tokenizer.k == 3
    assert type(ad.model).__name__ == "BertForMaskedLM"  # the auto_map to custom code is ignored
    assert ad.tokenizer.mask_token_id == 4 and ad.tokenizer.pad_token_id == 0
    with pytest.raises(SaeflowError, match="at most 64"):
        ad.tokenize(["ACGT" * 20])  # 75 6-mers + 2 specials > 64 positions
    tb = ad.tokenize(["ACGT" * 20], max_length=10)
    toks = ad.tokenizer.convert_ids_to_tokens(tb.input_ids[0])
    assert len(toks) == 10 and toks[0] == "[CLS]" and toks[-1] == "[SEP]"
    assert tb.offsets[0, 1:-1, 0].tolist() == list(range(8))
    assert detect_family(dirs["dnabert6"]) == "dnabert"
    assert load_vocab(dirs["dnabert6"])[5] == "AAAAAA"


def test_dnabert_vocab_errors(tmp_path):
    from saeflow.models.dnabert import KmerTokenizer

    (tmp_path / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "AAA", "AAT"])
    )
    with pytest.raises(
        SaeflowError, match=r"vocab\.txt: 2 distinct 3-mers, a 3-mer vocabulary has 64"
    ):
        KmerTokenizer.from_file(tmp_path / "vocab.txt")
    with pytest.raises(SaeflowError, match="no such file"):
        KmerTokenizer.from_file(tmp_path / "missing.txt")


# --- Nucleotide Transformer v2 ------------------------------------------------------------------
def test_nt_tokens_six_mers_n_and_ragged_tail(adapters):
    ad = adapters["nt"]
    assert ad.family == "nucleotide_transformer" and ad.tokenizer.k == 6
    assert type(ad.model).__name__ == "NTv2ForMaskedLM"
    s = "ACGTACGGTTAACG" + "N" + "ACGTACGT" + "NN" + "TTTTTTA"
    tb = ad.tokenize([s, s.lower(), "ACG"])
    toks = ad.tokenizer.convert_ids_to_tokens(tb.input_ids[0])
    assert toks == [
        "<cls>",
        "ACGTAC",
        "GGTTAA",
        "C",
        "G",
        "N",
        "ACGTAC",
        "G",
        "T",
        "N",
        "N",
        "TTTTTT",
        "A",
    ]
    assert tb.offsets[0].tolist() == [
        [0, 0],
        [0, 6],
        [6, 12],
        [12, 13],
        [13, 14],
        [14, 15],
        [15, 21],
        [21, 22],
        [22, 23],
        [23, 24],
        [24, 25],
        [25, 31],
        [31, 32],
    ]
    assert torch.equal(tb.input_ids[1], tb.input_ids[0])  # case-insensitive
    assert tb.special[0].tolist() == [True] + [False] * 12  # <cls> first, no <eos>
    for b, seq in enumerate([s, s, "ACG"]):
        seq = seq.upper()
        for t in np.flatnonzero(~tb.special[b]):
            start, end = tb.offsets[b, t]
            assert seq[start:end] == ad.tokenizer.tokens[int(tb.input_ids[b, t])]
        covered = sorted((int(a), int(e)) for a, e in tb.offsets[b][~tb.special[b]])
        assert covered[0][0] == 0 and covered[-1][1] == len(seq)  # the tokens tile the sequence
        assert all(x[1] == y[0] for x, y in zip(covered, covered[1:]))
    assert ad.tokenizer.convert_ids_to_tokens(tb.input_ids[2][tb.attention_mask[2] == 1]) == [
        "<cls>",
        "A",
        "C",
        "G",
    ]
    assert (tb.input_ids[2, 4:] == 1).all() and tb.special[2, 4:].all()  # <pad> = 1
    assert ad.tokenizer.mask_token_id == 2
    tb = ad.tokenize(["ACGTAC" * 10], max_length=4)
    assert ad.tokenizer.convert_ids_to_tokens(tb.input_ids[0]) == [
        "<cls>",
        "ACGTAC",
        "ACGTAC",
        "ACGTAC",
    ]


def test_nt_tokens_equal_transformers_esm_tokenizer(dirs, adapters):
    """Cross-check against transformers' EsmTokenizer (the checkpoints' tokenizer class) on the same
    vocab.txt. The released special_tokens_map.json names no eos_token, so it adds none: 251 bases
    give 41 6-mers + 5 single bases + <cls> = 47 tokens, as recorded for the real tokenizer."""
    from transformers import EsmTokenizer

    ref = EsmTokenizer(str(dirs["nt"] / "vocab.txt"), eos_token=None)
    ad = adapters["nt"]
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGTACGTACGTN"), rng.integers(0, 60))) for _ in range(200)]
    seqs.append("".join(rng.choice(list("ACGT"), 251)))
    for s in seqs:
        tb = ad.tokenize([s])
        assert tb.input_ids[0].tolist() == ref(s)["input_ids"], s
    assert tb.input_ids.shape[1] == 47


def test_nt_swiglu_is_the_published_feed_forward(adapters):
    """intermediate = silu(x1) * x2 of the two halves of one bias-free projection; output has no
    bias."""
    ad = adapters["nt"]
    layer = ad.model.esm.encoder.layer[0]
    assert (
        layer.intermediate.dense.weight.shape == (2 * 24, 16)
        and layer.intermediate.dense.bias is None
    )
    assert layer.output.dense.weight.shape == (16, 24) and layer.output.dense.bias is None
    x = torch.randn(2, 5, 16)
    x1, x2 = (x @ layer.intermediate.dense.weight.T).split(24, dim=-1)
    torch.testing.assert_close(layer.intermediate(x), torch.nn.functional.silu(x1) * x2)


# Key names of the published NT v2 checkpoints (nucleotide-transformer-v2-*-multi-species,
# model.safetensors), as their remote modeling_esm.py names its modules: transformers' ESM names
# plus SwiGLU `intermediate.dense` / `output.dense` without biases, an (unused) absolute
# `position_embeddings` table and one rotary `inv_freq` buffer per layer.
PUBLISHED_LAYER_KEYS = [
    "attention.self.query.weight",
    "attention.self.query.bias",
    "attention.self.key.weight",
    "attention.self.key.bias",
    "attention.self.value.weight",
    "attention.self.value.bias",
    "attention.self.rotary_embeddings.inv_freq",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "attention.LayerNorm.weight",
    "attention.LayerNorm.bias",
    "intermediate.dense.weight",
    "output.dense.weight",
    "LayerNorm.weight",
    "LayerNorm.bias",
]
PUBLISHED_TOP_KEYS = [
    "esm.embeddings.word_embeddings.weight",
    "esm.embeddings.position_embeddings.weight",
    "esm.encoder.emb_layer_norm_after.weight",
    "esm.encoder.emb_layer_norm_after.bias",
    "esm.contact_head.regression.weight",
    "esm.contact_head.regression.bias",
    "lm_head.dense.weight",
    "lm_head.dense.bias",
    "lm_head.layer_norm.weight",
    "lm_head.layer_norm.bias",
    "lm_head.decoder.weight",
    "lm_head.bias",
]


def test_nt_v2_state_dict_matches_the_published_checkpoint():
    """The real 50M config: key names and shapes, and the parameter counts of the loaded checkpoint
    (55,904,972 in all, 53,534,401 in `esm.`; recorded by a project that loads the real weights with
    the remote code: kurtvalcorza/nucleotide-transformer-genomics-pipeline)."""
    from transformers import EsmConfig

    from saeflow.models.ntv2_modeling import NTv2ForMaskedLM

    cfg = EsmConfig(
        **nt_config(
            hidden_size=512, intermediate_size=2048, num_attention_heads=16, num_hidden_layers=12
        )
    )
    with torch.device("meta"):
        model = NTv2ForMaskedLM(cfg)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    published = {k: None for k in PUBLISHED_TOP_KEYS}
    published.update(
        {f"esm.encoder.layer.{i}.{k}": None for i in range(12) for k in PUBLISHED_LAYER_KEYS}
    )
    per_layer_inv = {k for k in published if k.endswith("rotary_embeddings.inv_freq")}
    assert set(ours) == (set(published) - per_layer_inv) | {"esm.rotary_embeddings.inv_freq"}
    assert ours["esm.encoder.layer.3.intermediate.dense.weight"] == (4096, 512)
    assert ours["esm.encoder.layer.3.output.dense.weight"] == (512, 2048)
    assert ours["esm.embeddings.word_embeddings.weight"] == (4107, 512)
    assert ours["esm.embeddings.position_embeddings.weight"] == (2050, 512)
    assert ours["esm.contact_head.regression.weight"] == (1, 12 * 16)
    assert ours["lm_head.decoder.weight"] == (4107, 512) and ours["lm_head.bias"] == (4107,)
    assert ours["esm.rotary_embeddings.inv_freq"] == (
        16,
    )  # d_head / 2, as each published per-layer buffer
    assert sum(p.numel() for p in model.parameters()) == 55_904_972
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("esm.")) == 53_534_401


def test_nt_published_layout_loads_every_tensor(tmp_path):
    """A checkpoint written with the published key names (per-layer inv_freq) loads with every
    tensor in place; one with a tensor missing is refused, naming it."""
    from safetensors.torch import load_file, save_file

    d, model = make_nt_dir(tmp_path)
    ad = load_model(d, family="nucleotide_transformer")
    want = model.state_dict()
    got = ad.model.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    sd = load_file(str(d / "model.safetensors"))
    del sd["esm.encoder.layer.1.output.dense.weight"]
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        SaeflowError, match=r"missing \['esm\.encoder\.layer\.1\.output\.dense\.weight'\]"
    ):
        load_model(d, family="nucleotide_transformer")


# --- Geneformer ---------------------------------------------------------------------------------
def gf_cells(X, ids):
    X = np.asarray(X, dtype=np.float32)
    return CellMatrix(
        sp.csr_matrix(X), np.asarray(ids, dtype=object), None, np.arange(len(X)).astype(str)
    )


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_geneformer_rank_value_encoding(tmp_path, version):
    d, tokens, medians = make_geneformer_dir(tmp_path, version)
    medians[gene(0)] = 50.0  # high median
    medians[gene(1)] = 1.0
    medians[gene(2)] = 10.0
    medians[gene(4)] = 1.0
    with open(next(tmp_path.glob("gene_median_dictionary*.pkl")), "wb") as fh:
        pickle.dump(medians, fh)
    ad = load_model(d, family="geneformer")
    assert ad.kind == "cells" and ad.tokenizer.version == version
    # gene0: 100 counts / median 50 = 2; gene1: 10 / 1 = 10; gene2: 30 / 10 = 3; gene3: 0 counts;
    # an unknown gene with 1000 counts (dropped, but part of the cell's total); gene4 in two
    # columns, 6 counts / median 1 each: Geneformer keeps both as tokens (it sums only when several
    # distinct ids map to one gene); gene5 with a version suffix is dropped, as Geneformer drops it
    # (tests/models/test_geneformer_tokenizer.py: the options that do otherwise).
    ids = [gene(0), gene(1), gene(2), gene(3), "ENSG99999999999", gene(4), gene(4), gene(5) + ".7"]
    medians_5 = medians[gene(5)]
    X = [[100, 10, 30, 0, 1000, 6, 6, 4 * medians_5], [0, 0, 5, 0, 0, 0, 0, 0]]
    tb = ad.tokenize(gf_cells(X, ids))
    order = [gene(1), gene(4), gene(4), gene(2), gene(0)]  # 10 > 6 = 6 > 3 > 2
    content = [g for g in tb.genes[0] if g]
    assert content == order
    assert [tokens[g] for g in order] == [
        int(i) for i, s in zip(tb.input_ids[0], tb.special[0]) if not s
    ]
    assert "ENSG99999999999" not in tb.genes and gene(3) not in tb.genes
    assert gene(5) not in tb.genes and gene(5) + ".7" not in tb.genes
    assert (tb.offsets == 0).all()
    toks = ad.tokenizer.convert_ids_to_tokens(tb.input_ids[1][tb.attention_mask[1] == 1])
    if version == "V2":
        assert ad.tokenizer.convert_ids_to_tokens(tb.input_ids[0]) == ["<cls>"] + order + ["<eos>"]
        assert toks == ["<cls>", gene(2), "<eos>"]
        assert (
            tb.genes[0, 0] == ""
            and tb.genes[0, -1] == ""
            and tb.special[0].tolist() == [True] + [False] * 5 + [True]
        )
    else:
        assert ad.tokenizer.convert_ids_to_tokens(tb.input_ids[0]) == order
        assert toks == [gene(2)] and not tb.special[0].any()
    assert tb.special[1, len(toks) :].all() and (tb.input_ids[1, len(toks) :] == 0).all()  # <pad>
    assert tb.attention_mask[1].tolist() == [1] * len(toks) + [0] * (
        tb.input_ids.shape[1] - len(toks)
    )


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_geneformer_truncation(adapters, version):
    ad = adapters[f"geneformer_{version}"]  # max_position_embeddings = 12
    X = np.zeros((1, 30))
    X[0, :20] = np.arange(20, 0, -1) * (1 + np.arange(20) % 5)  # normalised value 20, 19, ..., 1
    c = gf_cells(X, [gene(i) for i in range(30)])
    tb = ad.tokenize(c)
    n_special = 2 if version == "V2" else 0
    assert tb.input_ids.shape == (1, 12)
    assert [g for g in tb.genes[0] if g] == [
        gene(i) for i in range(12 - n_special)
    ]  # the top of the ranking
    tb = ad.tokenize(c, max_length=5)
    assert [g for g in tb.genes[0] if g] == [
        gene(i) for i in range(5 - n_special)
    ] and tb.input_ids.shape == (1, 5)


@pytest.mark.parametrize("version,size", [("V1", 2048), ("V2", 4096)])
def test_geneformer_model_input_size(version, size):
    from saeflow.models.geneformer import GeneformerTokenizer

    n = size + 100
    specials = ["<pad>", "<mask>"] + (["<cls>", "<eos>"] if version == "V2" else [])
    td = {t: i for i, t in enumerate(specials)} | {gene(i): len(specials) + i for i in range(n)}
    tok = GeneformerTokenizer(td, {gene(i): 1.0 for i in range(n)}, size, version == "V2")
    X = np.arange(n, 0, -1)[None, :].astype(np.float32)  # gene i ranks i-th
    tb = tok.encode(gf_cells(X, [gene(i) for i in range(n)]))
    assert tb.input_ids.shape == (1, size)
    if version == "V2":
        assert tb.input_ids[0, 0] == td["<cls>"] and tb.input_ids[0, -1] == td["<eos>"]
        assert tb.genes[0, -2] == gene(size - 3)
    else:
        assert tb.genes[0, -1] == gene(size - 1)


def test_geneformer_errors(dirs, adapters, tmp_path):
    ad = adapters["geneformer_V1"]
    c = cells()
    with pytest.raises(SaeflowError, match="gene_ids=None"):
        ad.tokenize(CellMatrix(c.X, None, np.array(["A"] * 30), c.names))
    with pytest.raises(SaeflowError, match="CellMatrix"):
        ad.tokenize(["ACGT"])
    # dictionaries are looked up in the model directory
    d, _, _ = make_geneformer_dir(tmp_path, "V1")
    (d / "token_dictionary.pkl").rename(tmp_path / "elsewhere.pkl")
    with pytest.raises(SaeflowError, match=r"no token_dictionary\*\.pkl"):
        load_model(d, family="geneformer")
    from saeflow.models.geneformer import load_geneformer

    assert load_geneformer(d, token_dictionary=tmp_path / "elsewhere.pkl").tokenizer.version == "V1"
    # a dictionary whose ids do not fit the model
    with open(d / "token_dictionary.pkl", "wb") as fh:
        pickle.dump({"<pad>": 0, "<mask>": 1, gene(0): 500}, fh)
    with pytest.raises(SaeflowError, match="does not belong to this model"):
        load_model(d, family="geneformer")
    assert load_vocab(dirs["geneformer_V2"])[2] == "<cls>"
    assert load_vocab(dirs["nt"], family="nucleotide_transformer")[3] == "<cls>"
    with pytest.raises(SaeflowError, match="unknown model family 'bogus'"):
        load_vocab(dirs["nt"], family="bogus")


def test_geneformer_dictionaries_in_a_repository_snapshot(tmp_path):
    """The ctheodoris/Geneformer layout: models in Geneformer-V*/ subfolders, dictionaries in the
    geneformer/ package (V2 at its top, V1 under gene_dictionaries_30m/); the V1 model gets the V1
    pair (picked by vocab_size). A sibling model merely named "geneformer" is not taken for that."""
    import shutil

    repo = tmp_path / "repo"
    model = repo / "Geneformer-V1-10M"
    model.mkdir(parents=True)
    make_geneformer_dir(model, "V1")
    (repo / "geneformer" / "gene_dictionaries_30m").mkdir(parents=True)
    (repo / "geneformer" / "__init__.py").write_text("")
    for f in ("token_dictionary.pkl", "gene_median_dictionary.pkl"):
        (model / f).rename(
            repo / "geneformer" / "gene_dictionaries_30m" / f.replace(".pkl", "_gc30M.pkl")
        )
    v2 = tmp_path / "v2"
    v2.mkdir()
    make_geneformer_dir(v2, "V2")
    for f in v2.glob("*_gc104M.pkl"):
        shutil.copy(f, repo / "geneformer" / f.name)
    assert detect_family(model) == "geneformer"
    ad = load_model(model)
    assert ad.tokenizer.version == "V1" and ad.tokenizer.source.endswith(
        "gene_dictionaries_30m/token_dictionary_gc30M.pkl"
    )
    # resources/models/<name>/: a DNABERT beside a Geneformer model called "geneformer"
    models = tmp_path / "models"
    (models / "geneformer").mkdir(parents=True)
    make_geneformer_dir(models / "geneformer", "V2")
    (models / "dnabert").mkdir()
    make_dnabert_dir(models / "dnabert", 3)
    assert detect_family(models / "dnabert") == "dnabert"
    assert detect_family(models / "geneformer") == "geneformer"


# --- through the workflow's extraction ------------------------------------------------------------
def test_extract_activations_records_spans_and_genes(adapters, tmp_path):
    import pandas as pd

    from saeflow.activations import ActivationStore, extract_activations

    seqs = pd.DataFrame({"sequence": SEQS, "split": ["train", "test", "train"]})
    for name in ("dnabert6", "nt"):
        ad = adapters[name]
        extract_activations(ad, seqs, [1, 2], tmp_path / name, batch_size=2)
        t = ActivationStore(tmp_path / name).tokens
        text = [SEQS[s].upper()[a:e] for s, a, e in zip(t.seq, t.start, t.end)]
        vocab = ad.tokenizer.tokens
        assert all(
            x == vocab[i] or vocab[i] in ("[UNK]", "<unk>") for x, i in zip(text, t.token_id)
        )
        direct = ad.hidden_states(ad.tokenize(SEQS[1:2]), [2])[2][0].numpy()
        rows = ActivationStore(tmp_path / name).layer(2)[(t.seq == 1).to_numpy()].astype(np.float32)
        np.testing.assert_allclose(
            rows, direct[~ad.tokenize(SEQS[1:2]).special[0]], atol=2e-2, rtol=1e-2
        )
    ad = adapters["geneformer_V2"]
    c = cells()
    extract_activations(ad, c, [1], tmp_path / "gf", batch_size=2)
    t = ActivationStore(tmp_path / "gf").tokens
    tb = ad.tokenize(c)
    assert t.gene.tolist() == [g for row in tb.genes for g in row if g]
    assert (t.start == 0).all() and (t.end == 0).all()


# --- the registry ---------------------------------------------------------------------------------
def test_registry_detects_and_refuses(dirs, tiny_model_dir, tmp_path):
    assert FAMILIES == (
        "toy",
        "dnabert",
        "nucleotide_transformer",
        "geneformer",
        "dnabert2",
        "scgpt",
    )
    from saeflow.models.dnabert2 import load_dnabert2
    from saeflow.models.scgpt import load_scgpt

    assert reg.FAMILY_MODULES["dnabert2"] == "saeflow.models.dnabert2"
    assert reg.FAMILY_MODULES["scgpt"] == "saeflow.models.scgpt"
    assert reg.lookup("dnabert2").load is load_dnabert2 and reg.lookup("scgpt").load is load_scgpt
    assert [reg.lookup(n).name for n in FAMILIES] == list(FAMILIES)
    assert detect_family(tiny_model_dir) == "toy"
    assert load_model(tiny_model_dir, family="toy").family == "hf_dna"
    for auto in ("auto", ""):  # the config's "detect" values
        assert load_model(tiny_model_dir, family=auto).family == "hf_dna"
    vocab = load_vocab(tiny_model_dir, family="toy")
    assert vocab == load_vocab(tiny_model_dir, family="auto") and "A" in vocab.values()
    # "toy" is the toy family, not "detect": another family's checkpoint is refused, named
    with pytest.raises(
        SaeflowError, match="no tokenizer.json.*'nucleotide_transformer' checkpoint"
    ):
        load_model(dirs["nt"], family="toy")
    assert detect_family(dirs["nt"]) == "nucleotide_transformer"
    assert detect_family(dirs["geneformer_V1"]) == "geneformer"
    ad = load_model(dirs["nt"])  # auto-detected
    assert ad.family == "nucleotide_transformer"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(
        SaeflowError, match="pass family= one of toy, dnabert, nucleotide_transformer"
    ):
        load_model(tmp_path)
    with pytest.raises(SaeflowError, match="unknown model family 'bogus'"):
        load_model(tmp_path, family="bogus")
    with pytest.raises(SaeflowError, match="not a model directory"):
        load_model(tmp_path / "nope")
    with pytest.raises(SaeflowError, match="not a model directory"):
        load_vocab(tmp_path / "nope")
    with pytest.raises(SaeflowError, match="cannot tell the model family"):
        load_vocab(tmp_path)  # no guessing: the vocabulary of a family that loads, or an error
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SaeflowError, match="config.json: not valid JSON"):
        detect_family(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(
        SaeflowError,
        match=r"no config.json\); expected a save_pretrained layout, or an scGPT checkpoint "
        r"\(args.json, vocab.json, \*.pt\)$",
    ):
        detect_family(tmp_path)


def test_detection_order_first_match_wins(dirs, tiny_model_dir, tmp_path):
    """Layouts that satisfy two rules go to the earlier family: DNABERT-2 ships tokenizer.json
    (toy's mark) and a BERT config; Geneformer's dictionary beats a vocab.txt; a fast tokenizer
    beside DNABERT's vocab.txt is a toy-style directory."""
    import shutil

    d2 = tmp_path / "dnabert2_like"
    shutil.copytree(tiny_model_dir, d2)
    cfg = json.loads((d2 / "config.json").read_text())
    (d2 / "config.json").write_text(json.dumps(cfg | {"alibi_starting_size": 512}))
    assert detect_family(d2) == "dnabert2"
    gf = tmp_path / "gf_like"
    shutil.copytree(dirs["dnabert6"], gf)
    shutil.copy(next(dirs["geneformer_V1"].glob("token_dictionary*.pkl")), gf)
    assert detect_family(gf) == "geneformer"
    toy = tmp_path / "toy_like"
    shutil.copytree(dirs["dnabert6"], toy)
    shutil.copy(tiny_model_dir / "tokenizer.json", toy)
    assert detect_family(toy) == "toy"
    assert [f.name for f in sorted(map(reg.lookup, FAMILIES), key=lambda f: f.priority)] == [
        "scgpt",
        "geneformer",
        "dnabert2",
        "toy",
        "dnabert",
        "nucleotide_transformer",
    ]


def test_a_family_plugs_in_through_register(dirs, monkeypatch, tmp_path):
    """A family from outside saeflow: registered, it is detected (by priority), loaded, listed."""
    monkeypatch.setattr(reg, "_registered", dict(reg._registered))
    loaded = []

    def load(path, device=None):
        loaded.append((path, device))
        return "adapter"

    fam = reg.Family(
        "mine",
        detect=lambda p: (p / "MINE").is_file(),
        load=load,
        vocab=lambda p: {0: "x"},
        priority=45,  # after toy, before dnabert
    )
    assert reg.register(fam) is fam
    (tmp_path / "MINE").write_text("")
    (tmp_path / "config.json").write_text("{}")
    assert detect_family(tmp_path) == "mine"
    assert load_model(tmp_path, device="cpu") == "adapter" and loaded == [(tmp_path, "cpu")]
    assert load_vocab(tmp_path) == {0: "x"} and load_vocab(dirs["nt"], family="mine") == {0: "x"}
    assert reg.known()[-1] == "mine" and "mine" not in FAMILIES
    (dirs["dnabert6"] / "MINE").write_text("")
    try:
        assert detect_family(dirs["dnabert6"]) == "mine"  # 45 < dnabert's 50
    finally:
        (dirs["dnabert6"] / "MINE").unlink()
    with pytest.raises(SaeflowError, match="cannot register"):
        reg.register(reg.Family("auto", fam.detect, fam.load, fam.vocab, 1))
    monkeypatch.setitem(reg.FAMILY_MODULES, "ghost", "saeflow.utils")
    with pytest.raises(SaeflowError, match="saeflow.utils does not register it"):
        load_model(tmp_path, family="ghost")

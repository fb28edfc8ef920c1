"""Tiny random-weight checkpoints in the released on-disk layouts of each model family.

Shared by the adapter unit tests (tests/models/test_adapters_hf.py, test_dnabert2.py,
test_scgpt.py) and the end-to-end workflow test of every family
(tests/workflow/test_family_workflows.py). Each builder writes a directory that
``saeflow.models.load_model(path, family=...)`` loads as the released checkpoint would be loaded:
the same file names, config keys and vocabulary / dictionary files, tiny sizes.
No network."""

from __future__ import annotations

import itertools
import json
import math
import pickle
import random

import torch
from torch import nn

# --- DNABERT, Nucleotide Transformer v2, Geneformer (Hugging Face BERT / ESM) --------------------
TINY = dict(
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=24,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def make_dnabert_dir(d, k, max_pos=64):
    """DNABERT-k: vocab.txt ([PAD] [UNK] [CLS] [SEP] [MASK], then the k-mers in zhihan1996's ACGT
    order A, T, C, G), a BertForMaskedLM, and the hub config's extras (auto_map to custom code, rnn
    keys)."""
    from transformers import BertConfig, BertForMaskedLM

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
        "".join(p) for p in itertools.product("ATCG", repeat=k)
    ]
    torch.manual_seed(k)
    model = BertForMaskedLM(
        BertConfig(vocab_size=len(vocab), max_position_embeddings=max_pos, pad_token_id=0, **TINY)
    )
    model.save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(
        auto_map={
            "AutoConfig": "configuration_bert.BertConfig",
            "AutoModelForMaskedLM": "dnabert_layer.BertForMaskedLM",
        },
        rnn="lstm",
        num_rnn_layer=1,
        split=10,
    )
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (d / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "DNATokenizer", "max_len": max_pos})
    )
    return d


NT_VOCAB = (
    ["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>"]
    + ["".join(p) for p in itertools.product("ATCG", repeat=6)]
    + list("ATCGN")
)


def nt_config(**over):
    """The published v2 config.json (nucleotide-transformer-v2-*-multi-species), tiny sizes."""
    cfg = {
        "add_bias_fnn": False,
        "architectures": ["EsmForMaskedLM"],
        "attention_probs_dropout_prob": 0.0,
        "auto_map": {
            "AutoConfig": "esm_config.EsmConfig",
            "AutoModelForMaskedLM": "modeling_esm.EsmForMaskedLM",
        },
        "emb_layer_norm_before": False,
        "esmfold_config": None,
        "hidden_dropout_prob": 0.0,
        "hidden_size": 16,
        "initializer_range": 0.02,
        "intermediate_size": 24,
        "is_folding_model": False,
        "layer_norm_eps": 1e-12,
        "mask_token_id": 2,
        "max_position_embeddings": 2050,
        "model_type": "esm",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "pad_token_id": 1,
        "position_embedding_type": "rotary",
        "tie_word_embeddings": False,
        "token_dropout": False,
        "torch_dtype": "float32",
        "use_cache": False,
        "vocab_list": None,
        "vocab_size": 4107,
    }
    cfg.update(over)
    return cfg


def published_nt_state_dict(model):
    """Our model's state dict in the published checkpoint's
    layout: one rotary inv_freq per layer."""
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    inv = sd.pop("esm.rotary_embeddings.inv_freq")
    for i in range(model.config.num_hidden_layers):
        sd[f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"] = inv.clone()
    return sd


def make_nt_dir(d, **over):
    """Nucleotide Transformer v2: model.safetensors (published keys), config.json, vocab.txt,
    special tokens. ``over``: config.json keys (sizes) instead of the tiny ones."""
    from safetensors.torch import save_file
    from transformers import EsmConfig

    from saeflow.models.ntv2_modeling import NTv2ForMaskedLM

    cfg = nt_config(**over)
    torch.manual_seed(0)
    model = NTv2ForMaskedLM(EsmConfig(**cfg))
    save_file(
        published_nt_state_dict(model), str(d / "model.safetensors"), metadata={"format": "pt"}
    )
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "vocab.txt").write_text("\n".join(NT_VOCAB))  # the released file has no final newline
    (d / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "cls_token": "<cls>",
                "mask_token": "<mask>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
            }
        )
    )
    return d, model


def gene(i):
    """The i-th made-up Ensembl id of the tiny Geneformer dictionaries."""
    return f"ENSG{i:011d}"


def make_geneformer_dir(d, version, n_genes=30, max_pos=12, sizes=None):
    """Geneformer: BertForMaskedLM + token_dictionary*.pkl / gene_median_dictionary*.pkl in the
    model dir. Gene i has token id (n_special + i) and median 1 + i % 5 (gene 0's median is set by
    the test). ``sizes``: BertConfig sizes instead of :data:`TINY`."""
    from transformers import BertConfig, BertForMaskedLM

    specials = ["<pad>", "<mask>"] + (["<cls>", "<eos>"] if version == "V2" else [])
    tokens = {t: i for i, t in enumerate(specials)}
    tokens.update({gene(i): len(specials) + i for i in range(n_genes)})
    medians = {gene(i): float(1 + i % 5) for i in range(n_genes)}
    suffix = "_gc104M" if version == "V2" else ""
    with open(d / f"token_dictionary{suffix}.pkl", "wb") as fh:
        pickle.dump(tokens, fh)
    with open(d / f"gene_median_dictionary{suffix}.pkl", "wb") as fh:
        pickle.dump(medians, fh)
    torch.manual_seed(1)
    cfg = BertConfig(
        vocab_size=len(tokens),
        max_position_embeddings=max_pos,
        pad_token_id=0,
        hidden_act="relu",
        **(sizes or TINY),
    )
    BertForMaskedLM(cfg).save_pretrained(d)
    return d, tokens, medians


# --- DNABERT-2 (zhihan1996/DNABERT-2-117M layout)
# --------------------------------------------------
DNABERT2_LAYERS = 2


def train_dnabert2_tokenizer(seed=0, vocab_size=80, corpus=None):
    """A BPE tokenizer trained on random DNA (or ``corpus``) the way the DNABERT-2 authors trained
    theirs."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    rng = random.Random(seed)
    if corpus is None:
        corpus = ["".join(rng.choice("ACGT") for _ in range(300)) for _ in range(60)]
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"],
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return tok


def write_dnabert2_checkpoint(
    d, hidden=32, heads=4, fmt="bin", seed=0, layers=DNABERT2_LAYERS, ffn=None, tokenizer=None
):
    """A random DNABERT-2-layout checkpoint in directory ``d``; returns the state dict written.
    ``layers``, ``ffn`` (intermediate_size, default 2 x hidden) and ``tokenizer`` (a trained
    BPE ``tokenizers.Tokenizer``) give other sizes than the tiny ones."""
    from saeflow.models.dnabert2 import Dnabert2Config, Dnabert2ForMaskedLM

    d.mkdir(parents=True, exist_ok=True)
    tok = tokenizer or train_dnabert2_tokenizer(seed)
    tok.save(str(d / "tokenizer.json"))
    cfg = {  # the real config.json's keys, tiny sizes
        "_name_or_path": "zhihan1996/DNABERT-2-117M",
        "alibi_starting_size": 512,
        "attention_probs_dropout_prob": 0.0,
        "auto_map": {"AutoModelForMaskedLM": "bert_layers.BertForMaskedLM"},
        "classifier_dropout": None,
        "gradient_checkpointing": False,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": ffn or 2 * hidden,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "transformers_version": "4.28.0",
        "type_vocab_size": 2,
        "use_cache": True,
        "vocab_size": tok.get_vocab_size(),
    }
    (d / "config.json").write_text(json.dumps(cfg))
    model = Dnabert2ForMaskedLM(Dnabert2Config.from_dict(cfg))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(
                torch.randn(p.shape, generator=gen)
                * (
                    0.1
                    if "LayerNorm" in name or "layernorm" in name
                    else 1 / math.sqrt(p.shape[-1])
                )
            )
            if name.endswith(("LayerNorm.weight", "layernorm.weight")):
                p.add_(1.0)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if fmt == "bin":
        torch.save(sd, d / "pytorch_model.bin")
    # safetensors refuses shared tensors: a de-duplicated save without the tied decoder weight
    else:
        from safetensors.torch import save_file

        save_file(
            {k: v for k, v in sd.items() if k != "cls.predictions.decoder.weight"},
            str(d / "model.safetensors"),
        )
    return sd


# --- scGPT (best_model.pt, vocab.json, args.json) -------------------------------------------------
SCGPT_D, SCGPT_H, SCGPT_D_HID, SCGPT_L = 16, 4, 32, 2
SCGPT_GENES = ["CD3E", "CD4", "CD8A", "MS4A1", "LYZ", "NKG7", "GNLY", "CD14", "FCGR3A", "PPBP"] + [
    f"G{i}" for i in range(30)
]
SCGPT_VOCAB = {g: i for i, g in enumerate(SCGPT_GENES)} | {
    "<pad>": len(SCGPT_GENES),
    "<cls>": len(SCGPT_GENES) + 1,
    "<eoc>": len(SCGPT_GENES) + 2,
}
SCGPT_ARGS = dict(
    embsize=SCGPT_D,
    nlayers=SCGPT_L,
    nheads=SCGPT_H,
    d_hid=SCGPT_D_HID,
    dropout=0.2,
    pad_token="<pad>",
    pad_value=-2,
    mask_value=-1,
    n_bins=51,
    input_emb_style="continuous",
    max_seq_len=1200,
    fast_transformer=True,
)


class ScgptReference(nn.Module):
    """scGPT TransformerModel (non-flash path) rebuilt from torch pieces, for keys and a forward to
    compare."""

    def __init__(self, ntoken: int):
        super().__init__()
        D, H, D_HID, L = SCGPT_D, SCGPT_H, SCGPT_D_HID, SCGPT_L
        self.encoder = nn.Module()
        self.encoder.embedding = nn.Embedding(ntoken, D)
        self.encoder.enc_norm = nn.LayerNorm(D)
        self.flag_encoder = nn.Embedding(2, D)
        self.value_encoder = nn.Module()
        self.value_encoder.linear1 = nn.Linear(1, D)
        self.value_encoder.linear2 = nn.Linear(D, D)
        self.value_encoder.norm = nn.LayerNorm(D)
        self.transformer_encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(D, H, D_HID, 0.0, batch_first=True),
            L,
            enable_nested_tensor=False,
        )
        self.decoder = nn.Module()
        self.decoder.fc = nn.Sequential(
            nn.Linear(D, D), nn.LeakyReLU(), nn.Linear(D, D), nn.LeakyReLU(), nn.Linear(D, 1)
        )
        self.mvc_decoder = nn.Module()
        self.mvc_decoder.gene2query = nn.Linear(D, D)
        self.mvc_decoder.W = nn.Linear(D, D, bias=False)

    def forward(self, ids, values, pad_mask):
        ve = self.value_encoder
        x = self.encoder.enc_norm(self.encoder.embedding(ids))
        v = torch.clamp(values.unsqueeze(-1), max=512)
        x = x + ve.norm(ve.linear2(torch.relu(ve.linear1(v))))
        hidden = [x]
        for layer in self.transformer_encoder.layers:
            x = layer(x, src_key_padding_mask=pad_mask)
            hidden.append(x)
        return hidden, self.decoder.fc(x).squeeze(-1)


def scgpt_reference_model(seed: int = 0) -> ScgptReference:
    torch.manual_seed(seed)
    ref = ScgptReference(len(SCGPT_VOCAB)).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    return ref


def scgpt_to_layout(sd: dict, layout: str) -> dict:
    """The in_proj state dict renamed to flash-attn 1.x (``Wqkv``) or scGPT's wrapper (``_impl``)
    names."""
    out = {}
    for k, v in sd.items():
        if layout in ("flash", "impl"):
            k = k.replace("self_attn.in_proj_weight", "self_attn.Wqkv.weight").replace(
                "self_attn.in_proj_bias", "self_attn.Wqkv.bias"
            )
        if layout == "impl":
            k = k.replace("self_attn.Wqkv.", "self_attn._impl.Wqkv.").replace(
                "self_attn.out_proj.", "self_attn._impl.out_proj."
            )
        out[k] = v.clone()
    return out


def write_scgpt_checkpoint(d, state, args=SCGPT_ARGS, vocab=SCGPT_VOCAB):
    d.mkdir(parents=True, exist_ok=True)
    (d / "args.json").write_text(json.dumps(args))
    (d / "vocab.json").write_text(json.dumps(vocab))
    torch.save(state, d / "best_model.pt")
    return d


# --- every family: the prefix reused by HookedAdapter.reusing_prefix -----------------------------
def check_prefix_reuse(ad, make_batch):
    """For a patch at each residual layer L: passes inside ``ad.reusing_prefix(L)`` give exactly
    the outputs of full passes (top residual layer and logits); the blocks below L run once per
    batch (their submodules are not called again on the same batch, and are on a new one); and a
    capture or patch below L is refused. Also that ``hidden_states`` (residual captures, no
    logits) stops after the highest layer it needs, with a full pass's tensors.
    ``make_batch()`` tokenises the same inputs afresh."""
    import pytest

    from saeflow.models.base import Capture, Patch
    from saeflow.utils import SaeflowError

    N, blocks = ad.n_layers, ad.blocks()
    calls = [0] * N

    def count(i):
        def f(mod, args):
            calls[i] += 1

        return f

    hooks = [
        m.register_forward_pre_hook(count(i))
        for i, b in enumerate(blocks)
        for m in list(b.modules())[1:]
    ]
    fns = [lambda h: 0.5 * h, torch.zeros_like, lambda h: h + 1.0]

    def outputs(tb, patch=None):
        r = ad.run(tb, Capture(resid=[N]), patch)
        return [r.resid[N]] + ([] if r.logits is None else [r.logits])

    try:
        for L in range(N + 1):
            tb = make_batch()
            refs = [outputs(tb, Patch(resid={L: f})) for f in fns]
            clean = outputs(tb)
            with ad.reusing_prefix(L):
                first = outputs(tb, Patch(resid={L: fns[1]}))  # records blocks 1..L, unpatched
                before = list(calls)
                got_clean = outputs(tb)
                got = [outputs(tb, Patch(resid={L: f})) for f in fns]
                assert calls[:L] == before[:L], f"layer {L}: blocks below it ran again"
                assert all(calls[i] > before[i] for i in range(L, N)), f"layer {L}"
                fresh = outputs(make_batch(), Patch(resid={L: fns[0]}))  # a new batch: recorded
                assert all(calls[i] > before[i] for i in range(N)) or L == 0
                if L:
                    with pytest.raises(SaeflowError, match="reused prefix"):
                        ad.run(tb, Capture(resid=[L - 1]))
                    with pytest.raises(SaeflowError, match="reused prefix"):
                        ad.run(tb, patch=Patch(heads={(L, 0): torch.zeros_like}))
            for a, b in zip(
                first + got_clean + [t for o in got for t in o] + fresh,
                refs[1] + clean + [t for o in refs for t in o] + refs[0],
            ):
                assert torch.equal(a, b), f"layer {L}"
        # outside the context every block runs again
        before = list(calls)
        outputs(make_batch())
        assert all(c > b for c, b in zip(calls, before))
        # a capture-only pass (hidden_states: no logits) stops after the highest layer it needs:
        # the same tensors as a full pass, and the blocks above that layer do not run
        for L in range(N + 1):
            tb = make_batch()
            full = ad.run(tb, Capture(resid=[L])).resid[L]
            before = list(calls)
            early = ad.hidden_states(tb, [L])[L]
            assert torch.equal(early, full), f"layer {L}"
            assert calls[L:] == before[L:], f"layer {L}: blocks above it ran"
            assert all(calls[i] > before[i] for i in range(L)), f"layer {L}"
    finally:
        for h in hooks:
            h.remove()

"""A single-nucleotide tokenizer as a real ``PreTrainedTokenizerFast``.

It saves and loads with ``save_pretrained`` / ``AutoTokenizer`` like any Hugging
Face tokenizer and returns token -> base offsets (``return_offsets_mapping``),
the same contract the k-mer and BPE tokenizers of real DNA models satisfy.
"""

from __future__ import annotations

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
NUCLEOTIDES = ["A", "C", "G", "T", "N"]


def build_nucleotide_tokenizer(model_max_length: int = 1024):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + NUCLEOTIDES)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOY = dict(
    seed=3,
    n_chromosomes=2,
    chromosome_length=20000,
    gc=0.42,
    motif_temperature=0.3,
    min_spacing=150,
    peak_halfwidth=100,
    jaspar_release="JASPAR2024",
    motifs=[
        dict(jaspar_id="MA0139.1", count=60, peaks=True),
        dict(jaspar_id="MA0108.1", count=40, promoter=True),
        dict(jaspar_id="MA0095.1", count=20),
    ],
)


@pytest.fixture(scope="session")
def toy_genome(tmp_path_factory):
    from saeflow.genome import bgzip_and_index
    from saeflow.toy import build_toy_genome

    d = tmp_path_factory.mktemp("toy")
    planted = build_toy_genome(TOY, d / "genome.fa", d / "peaks.bed", d / "signal.bw", d / "planted.tsv")
    bgzip_and_index(d / "genome.fa", d / "genome.fa.gz")
    return d, planted


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny untrained EsmForMaskedLM + nucleotide tokenizer saved with save_pretrained."""
    from saeflow.models.tokenizer import build_nucleotide_tokenizer
    from saeflow.models.toy_lm import build_model

    d = tmp_path_factory.mktemp("model")
    tok = build_nucleotide_tokenizer(130)
    model = build_model(dict(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, seq_len=128), tok)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d

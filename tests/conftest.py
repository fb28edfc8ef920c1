import os

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """The env builds (marker ``envs``: nine fresh venvs, ~4 min) run where they are asked for:
    SAEFLOW_TEST_ENVS=1 (CI's .ci/run sets it) or ``-m envs``. Elsewhere they are skipped with that
    reason; the envs' static checks (pins, rule-to-env map, imports) always run."""
    if os.environ.get("SAEFLOW_TEST_ENVS") == "1" or "envs" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="env builds: SAEFLOW_TEST_ENVS=1 (CI sets it) or -m envs")
    for item in items:
        if "envs" in item.keywords:
            item.add_marker(skip)


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
    from saeflow.dna.genome import bgzip_and_index
    from saeflow.dna.toy import build_toy_genome

    d = tmp_path_factory.mktemp("toy")
    planted = build_toy_genome(
        TOY, d / "genome.fa", d / "peaks.bed", d / "signal.bw", d / "planted.tsv"
    )
    bgzip_and_index(d / "genome.fa", d / "genome.fa.gz")
    return d, planted


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny untrained EsmForMaskedLM + nucleotide tokenizer saved with save_pretrained."""
    from saeflow.models.tokenizer import build_nucleotide_tokenizer
    from saeflow.models.toy_lm import build_model

    d = tmp_path_factory.mktemp("model")
    tok = build_nucleotide_tokenizer(130)
    model = build_model(
        dict(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, seq_len=128), tok
    )
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def make_store(tmp_path, n=6000, d=16, n_atoms=24, k=3, seed=0):
    """Synthetic sparse activations: each row a sum of k of n_atoms unit directions (10 tokens per
    sequence)."""
    from saeflow.activations import ActivationStore
    from saeflow.utils import write_json

    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(n_atoms, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    x = np.zeros((n, d))
    for i in range(n):
        idx = rng.choice(n_atoms, k, replace=False)
        x[i] = (rng.uniform(1, 3, k)[:, None] * atoms[idx]).sum(0)
    x = 5 * x + 2.0  # offset and scale: exercises b_dec and input scaling
    d_ = tmp_path / "acts"
    d_.mkdir(parents=True)
    np.save(d_ / "layer1.npy", x.astype(np.float16))
    pd.DataFrame(
        {"seq": np.arange(n) // 10, "pos": np.arange(n) % 10, "token_id": 0, "start": 0, "end": 1}
    ).to_parquet(d_ / "tokens.parquet")
    write_json(
        d_ / "manifest.json",
        {
            "n_tokens": n,
            "d_model": d,
            "layers": [1],
            "model": "syn",
            "dataset": "syn",
            "n_sequences": n // 10,
        },
    )
    return ActivationStore(d_), atoms


def split(store):
    """Held-out by sequence: every 5th sequence (of 10 tokens) is test."""
    ranges = np.stack([store.seq_offsets[:-1], store.seq_offsets[1:]], axis=1)
    is_test = np.arange(len(ranges)) % 5 == 0
    return ranges[~is_test], ranges[is_test]


@pytest.fixture(scope="session")
def local_run(tmp_path_factory):
    """The workflow's test config run to the end with the local executor (shared by the workflow
    and SLURM tests, which compares its outputs with this run's)."""
    from wfutil import copy_workflow, load_test_config, smk

    wd = copy_workflow(tmp_path_factory.mktemp("run"), load_test_config())
    # ~120 jobs: two toy LMs, a toy Geneformer, SAEs, evidence, comparisons, atlases
    smk(wd, timeout=3600)
    return wd

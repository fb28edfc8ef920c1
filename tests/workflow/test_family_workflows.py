"""The whole DAG once per model family, on tiny random checkpoints in the released layouts.

One workdir and one Snakemake invocation (``--keep-going``) run five ``source: local`` models
(DNABERT-6, Nucleotide Transformer v2, DNABERT-2, Geneformer V2, scGPT; checkpoints from
tests/tinymodels.py) through extraction, SAE training, evaluation and (DNA) the feature catalog
and ground-truth recovery:

* DNABERT and NT on peak windows of a small toy genome, DNABERT-2 on the toy promoter task;
* Geneformer and scGPT on a synthetic h5ad of raw counts whose gene ids (Geneformer's
  dictionary) and symbols (scGPT's vocabulary) are columns of ``var``, with perturbed cells that
  prepare_cells drops and genes neither model knows.

Each family is its own test, so a failure names the family (and shows its jobs' logs). The
token counts are recomputed here from the inputs (k-mers, 6-mers + ragged tail, the BPE file,
nonzero known genes), not with the adapters.
"""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pandas as pd
import pytest
from tinymodels import (
    SCGPT_GENES,
    gene,
    make_dnabert_dir,
    make_geneformer_dir,
    make_nt_dir,
    scgpt_reference_model,
    scgpt_to_layout,
    write_dnabert2_checkpoint,
    write_scgpt_checkpoint,
)
from wfutil import copy_workflow, smk

pytestmark = pytest.mark.workflow

LAYERS = [1, 2]
SAE = "tiny"
DNABERT_K = 6
N_GENES = 40  # genes both tiny cell models know (Geneformer by id, scGPT by symbol)
GENEFORMER_SUBFOLDER = "Geneformer-V2-tiny"

#: family -> (model name, dataset); the model names double as the workflow's {model} wildcard
RUNS = {
    "dnabert": ("dnabert6", "peaks"),
    "nucleotide_transformer": ("ntv2", "peaks"),
    "dnabert2": ("dnabert2", "promoters"),
    "geneformer": ("geneformer", "cells"),
    "scgpt": ("scgpt", "cells"),
}
DNA = ("dnabert", "nucleotide_transformer", "dnabert2")


def write_models(root):
    """Each family's tiny checkpoint in its released layout; returns {family: directory}.

    Geneformer is a snapshot of its repository (ctheodoris/Geneformer): the model in a subfolder
    (models.<name>.subfolder), the dictionaries in the repository's ``geneformer/`` package, beside
    a V1 dictionary of another size that must not be picked.
    """
    root.mkdir()
    dirs = {f: root / RUNS[f][0] for f in RUNS}
    for d in dirs.values():
        d.mkdir()
    make_dnabert_dir(dirs["dnabert"], DNABERT_K)
    make_nt_dir(dirs["nucleotide_transformer"])
    write_dnabert2_checkpoint(dirs["dnabert2"])
    ckpt, package = dirs["geneformer"] / GENEFORMER_SUBFOLDER, dirs["geneformer"] / "geneformer"
    for d in (ckpt, package, package / "gene_dictionaries_30m"):
        d.mkdir()
    make_geneformer_dir(ckpt, "V2", n_genes=N_GENES, max_pos=64)
    for f in ckpt.glob("*.pkl"):
        f.rename(package / f.name)
    (package / "__init__.py").write_text("")
    v1 = {"<pad>": 0, "<mask>": 1} | {gene(i): 2 + i for i in range(10)}
    for name, obj in (
        ("token_dictionary_gc30M.pkl", v1),
        ("gene_median_dictionary_gc30M.pkl", {gene(i): 1.0 for i in range(10)}),
    ):
        (package / "gene_dictionaries_30m" / name).write_bytes(pickle.dumps(obj))
    write_scgpt_checkpoint(
        dirs["scgpt"], scgpt_to_layout(scgpt_reference_model().state_dict(), "flash")
    )
    return dirs


def write_cells(path, n_cells=120, seed=0):
    """Raw counts of 120 cells (80 non-targeting controls), N_GENES known genes + 2 unknown ones."""
    import anndata
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    n_var = N_GENES + 2
    X = rng.poisson(2.0, size=(n_cells, n_var)) * (rng.random((n_cells, n_var)) < 0.5)
    X[np.arange(n_cells), rng.integers(0, N_GENES, n_cells)] += 1
    X[1, :N_GENES] = 0  # a control cell that expresses no gene the models know: no tokens at all
    X[1, N_GENES:] = 3
    obs = pd.DataFrame(
        {
            "gene": ["non-targeting" if i % 3 else f"KO{i % 7}" for i in range(n_cells)],
            "celltype": [f"t{i % 4}" for i in range(n_cells)],
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(
        {
            "ensembl_id": [gene(i) for i in range(N_GENES)]
            + ["ENSG99999999998", "ENSG99999999999"],
            "symbol": SCGPT_GENES[:N_GENES] + ["NOT_A_GENE", "ALSO_NOT"],
        },
        index=[f"feature{j}" for j in range(n_var)],
    )
    anndata.AnnData(X=sp.csr_matrix(X.astype(np.float32)), obs=obs, var=var).write_h5ad(path)


def family_config(model_dirs, h5ad):
    models = {
        RUNS[f][0]: {
            "source": "local",
            "path": str(d),
            "family": f,
            "layers": LAYERS,
            "batch_size": 32,
        }
        for f, d in model_dirs.items()
    }
    models["geneformer"]["subfolder"] = GENEFORMER_SUBFOLDER
    for name in (
        "geneformer",
        "scgpt",
    ):  # every layer, counted from config.json / scGPT's args.json
        del models[name]["layers"]
    return {
        "references": {
            "toy": {
                "source": "toy",
                "toy": {
                    "seed": 1,
                    "n_chromosomes": 2,
                    "chromosome_length": 20000,
                    "min_spacing": 150,
                    "peak_halfwidth": 100,
                    "motifs": [
                        {"jaspar_id": "MA0139.1", "count": 50, "peaks": True},
                        {"jaspar_id": "MA0108.1", "count": 40, "promoter": True},
                        {"jaspar_id": "MA0095.1", "count": 20},
                    ],
                    "task": {"negative_pool": 200},
                },
            }
        },
        "models": models,
        "datasets": {
            # 64 bp: 59 overlapping 6-mers (+ [CLS] [SEP] fits DNABERT's 64 positions); 10 NT 6-mers
            # + 4 bases
            "peaks": {"reference": "toy", "kind": "peaks", "window": 64, "max_peaks": 40},
            "promoters": {"reference": "toy", "kind": "task"},
            "cells": {
                "kind": "cells",
                "h5ad": str(h5ad),
                "perturbation_column": "gene",
                "control_label": "non-targeting",
                "label_column": "celltype",
                "gene_id_column": "ensembl_id",
                "gene_symbol_column": "symbol",
                "shards": 2,
            },
        },
        "runs": [{"model": m, "dataset": d, "saes": [SAE]} for m, d in RUNS.values()],
        "saes": {SAE: {"arch": "topk", "expansion": 2, "k": 4, "epochs": 1, "batch_size": 128}},
        "catalog": {"svd_sample": 1000, "top_n": 5, "n_contexts": 2},
        "threads": 1,
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("families")
    dirs = write_models(wd / "models")
    (wd / "data").mkdir()
    write_cells(wd / "data" / "cells.h5ad")
    copy_workflow(wd, family_config(dirs, wd / "data" / "cells.h5ad"))
    p = smk(wd, "--keep-going", check=False)
    return wd, dirs, p


def _logs(wd, model, dataset):
    """The tail of every failed log of this model's (and its
    dataset's) jobs, for failure messages."""
    out = []
    for f in sorted((wd / "logs").rglob("*")):
        parts = f.relative_to(wd / "logs").parts
        if f.is_file() and (model in parts or dataset in parts or f.stem == dataset):
            text = f.read_text(errors="replace")
            if "Error" in text or "Traceback" in text:
                out.append(f"--- {f.relative_to(wd)}\n{text[-2500:]}")
    return "\n".join(out)


def _outputs(family):
    model, dataset = RUNS[family]
    base = f"results/{model}/{dataset}"
    out = [
        f"{base}/activations/manifest.json",
        f"{base}/sae/{SAE}/training_curves.png",
        f"{base}/eval/{SAE}/summary.tsv",
        f"{base}/eval/{SAE}/summary.png",
    ]
    out += [
        f"{base}/sae/{SAE}/layer{L}/{f}"
        for L in LAYERS
        for f in ("cfg.json", "sae_weights.safetensors", "metrics.json")
    ]
    out += [f"{base}/eval/{SAE}/layer{L}.json" for L in LAYERS]
    if family in DNA:
        out += [f"{base}/catalog/{SAE}/summary.tsv", f"{base}/recovery/{SAE}/recovery.tsv"]
        out += [
            f"{base}/catalog/{SAE}/layer{L}/{f}"
            for L in LAYERS
            for f in ("features.parquet", "contexts.tsv")
        ]
    return out


def _expected_tokens(family, model_dir, wd, dataset):
    """Non-special tokens per sequence (cell), from the inputs and the checkpoint's files alone."""
    if family in DNA:
        seqs = pd.read_parquet(wd / f"results/datasets/{dataset}/sequences.parquet").sequence
        assert seqs.str.fullmatch("[ACGT]+").all()  # the toy genome has no N
        if family == "dnabert":
            return np.array([len(s) - DNABERT_K + 1 for s in seqs])
        if family == "nucleotide_transformer":
            # 6-mers, then the tail base by base
            return np.array([len(s) // 6 + len(s) % 6 for s in seqs])
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        return np.array([len(tok.encode(s).ids) - 2 for s in seqs])  # [CLS] ... [SEP]
    import anndata

    a = anndata.read_h5ad(wd / "results/datasets/cells/cells.h5ad")
    known = a.var.gene_id.isin([gene(i) for i in range(N_GENES)]).to_numpy()
    n = np.asarray((a.X[:, known] > 0).sum(axis=1)).ravel()
    assert (
        n + 2 <= 64
    ).all()  # Geneformer V2's <cls> ... <eos> fit its 64 positions: nothing truncated
    return n


@pytest.mark.parametrize("family", list(RUNS))
def test_family_runs_end_to_end(run, family):
    from saeflow.activations import ActivationStore

    wd, dirs, p = run
    model, dataset = RUNS[family]
    missing = [f for f in _outputs(family) if not (wd / f).exists()]
    assert not missing, (
        f"{family}: missing {missing[:6]}\n{_logs(wd, model, dataset)}\n"
        f"snakemake said:\n{(p.stdout + p.stderr)[-3000:]}"
    )
    base = wd / "results" / model / dataset
    seqs = pd.read_parquet(wd / f"results/datasets/{dataset}/sequences.parquet")
    assert 50 <= len(seqs) <= 120 and (seqs.split == "test").any()

    # activations: one row per non-special token, every layer, sequence by sequence
    store = ActivationStore(base / "activations")
    counts = _expected_tokens(family, dirs[family], wd, dataset)
    assert len(counts) == len(seqs) and store.manifest["n_sequences"] == len(seqs)
    np.testing.assert_array_equal(np.diff(store.seq_offsets), counts)
    assert store.manifest["n_tokens"] == counts.sum() and store.manifest["layers"] == LAYERS
    assert store.manifest["d_model"] == (32 if family == "dnabert2" else 16)
    for L in LAYERS:
        x = np.asarray(store.layer(L), dtype=np.float32)
        assert (
            x.shape == (counts.sum(), store.manifest["d_model"])
            and np.isfinite(x).all()
            and x.std() > 0
        )
    tokens = store.tokens
    if family in DNA:
        assert (tokens.end > tokens.start).all()
        assert (tokens.end.to_numpy() <= seqs.sequence.str.len().to_numpy()[tokens.seq]).all()
    else:  # cells: the gene of each token, among that cell's expressed genes
        assert "gene" in tokens.columns and (tokens.gene != "").all()
        # the cell without known genes
        assert store.manifest["shards"] == 2 and (counts == 0).sum() == 1
        import anndata

        # the rows of the cell table
        cells = anndata.read_h5ad(wd / "results/datasets/cells/cells.h5ad")
        # scGPT: symbols; Geneformer: ids
        names = cells.var.gene_symbol if family == "scgpt" else cells.var.gene_id
        rows, cols = cells.X.nonzero()
        expressed = set(zip(rows.tolist(), names.to_numpy()[cols]))
        assert all(pair in expressed for pair in zip(tokens.seq.tolist(), tokens.gene)), (
            "token genes not expressed"
        )
        assert not tokens.duplicated(["seq", "gene"]).any()

    # SAEs and their held-out evaluation
    for L in LAYERS:
        cfg = json.loads((base / f"sae/{SAE}/layer{L}/cfg.json").read_text())
        assert cfg["d_in"] == store.manifest["d_model"] and cfg["d_sae"] == 2 * cfg["d_in"]
        ev = json.loads((base / f"eval/{SAE}/layer{L}.json").read_text())
        assert ev["layer"] == L and ev["model"] == model and 0 < ev["l0"] <= 4 + 1e-6
        assert math.isfinite(ev["fvu"])
        if family in DNA:  # random weights: zeroing a layer may barely move the loss
            assert ev["n_masked_tokens"] > 0 and ev["loss_clean"] > 0
            if abs(ev["loss_zero"] - ev["loss_clean"]) >= ev["min_gap"]:
                assert math.isfinite(ev["loss_recovered"]) and not ev["loss_note"], ev
            else:
                assert ev["loss_recovered"] is None and "less than min_gap" in ev["loss_note"], ev
        else:
            assert ev["loss_recovered"] is None and family in ev["loss_note"], ev
    summary = pd.read_csv(base / f"eval/{SAE}/summary.tsv", sep="\t")
    assert summary.layer.tolist() == LAYERS

    if family not in DNA:
        assert not (base / "catalog").exists()
        return
    # the catalog reads the family's vocabulary: each context's token is the bases it covers
    cat = pd.read_csv(base / f"catalog/{SAE}/summary.tsv", sep="\t")
    assert cat.layer.tolist() == LAYERS and (cat.Alive > 0).all()
    by_name = dict(zip(seqs.name, seqs.sequence))
    for L in LAYERS:
        ctx = pd.read_csv(
            base / f"catalog/{SAE}/layer{L}/contexts.tsv", sep="\t", keep_default_na=False
        )
        assert len(ctx)
        bases = [by_name[s][a:e] for s, a, e in zip(ctx.sequence, ctx.start, ctx.end)]
        assert ctx.token.tolist() == bases, ctx[["token", "start", "end"]]
        feats = pd.read_parquet(base / f"catalog/{SAE}/layer{L}/features.parquet")
        top = [t.rsplit(":", 1)[0] for row in feats.top_tokens if row for t in row.split(",")]
        assert top and all(set(t) <= set("ACGT") for t in top), top[:10]
    rec = pd.read_csv(base / f"recovery/{SAE}/recovery.tsv", sep="\t")
    assert set(rec.layer) == set(LAYERS) and rec.f1.between(0, 1).all()
    # patching works through every tokeniser: DNABERT-2's BPE may split the destroyed site
    # differently,
    # and the pair is redrawn until the tokens outside the site and the token count agree
    pairs = pd.read_csv(base / "evidence/patching_pairs.tsv", sep="\t")
    assert pairs.kept.all() and len(pairs) >= 1, pairs
    per = pd.read_parquet(base / "evidence/patching_per_pair.parquet")
    assert set(per.pair) == set(range(len(pairs))) and per.patched.notna().all()


def test_the_run_as_a_whole_succeeds(run):
    wd, _, p = run
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    dry = smk(wd, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr

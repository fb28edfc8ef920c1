import os

import numpy as np
import pandas as pd
import torch

from saeflow import histogram
from saeflow.activations import ActivationStore
from saeflow.dna.catalog import build_catalog
from saeflow.models import load_vocab
from saeflow.sae.base import load_sae
from saeflow.utils import atomic_path, read_json, setup_logging, write_json

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
i = snakemake.input
sae = load_sae(i.sae)
# the vocabulary of the family the model was extracted with
vocab = load_vocab(
    os.path.join(i.model, snakemake.params.subfolder), family=snakemake.params.family
)
hist = histogram.empty(sae.d_sae)  # per-feature activation histograms (the atlas's feature pages)
feats, contexts, summary, sv = build_catalog(
    sae,
    ActivationStore(i.acts),
    int(snakemake.wildcards.layer),
    pd.read_parquet(i.sequences),
    vocab,
    snakemake.params.catalog,
    read_json(f"{i.sae}/metrics.json"),
    hist=hist,
)
with atomic_path(snakemake.output[0]) as tmp:
    tmp.mkdir()
    feats.to_parquet(tmp / "features.parquet", index=False)
    contexts.to_csv(tmp / "contexts.tsv", sep="\t", index=False)
    write_json(tmp / "summary.json", summary)
    write_json(tmp / "singular_values.json", sv[:100].tolist())
    np.save(tmp / histogram.FILE, hist)

import pandas as pd
import torch

from saeflow.activations import ActivationStore
from saeflow.compare.codes import gene_mean_codes, sequence_codes
from saeflow.compare.matching import shared_rows
from saeflow.compare.runs import (
    MATCH_SUMMARY_COLUMNS,
    layer_pairs,
    match_pair,
    matching_rows,
    plot_matching,
    sample_rows,
)
from saeflow.sae.base import load_sae
from saeflow.utils import SaeflowError, setup_job, write_table

setup_job(snakemake)
torch.set_num_threads(snakemake.threads)
runs, s, w = snakemake.params.runs, snakemake.params.settings, snakemake.wildcards
m = s["matching"]
by = {r["label"]: r for r in runs}
stores = {k: ActivationStore(r["files"]["activations"]) for k, r in by.items()}
sae_dir = {k: dict(zip(r["layers"], r["files"]["saes"])) for k, r in by.items()}
cache = {}


def codes(label, layer, rows, seq_idx=None):
    """Mean codes of one run's layer: per sampled sequence (an array) or per gene (a DataFrame by gene)."""
    if (label, layer, rows) not in cache:
        sae = load_sae(sae_dir[label][layer])
        if (
            rows == "sequence"
        ):  # the sample depends on the dataset only: the same for every run on it
            cache[label, layer, rows] = sequence_codes(stores[label], sae, layer, seq_idx)
        else:
            c, names = gene_mean_codes(stores[label], sae, layer)
            cache[label, layer, rows] = pd.DataFrame(c, index=names)
    return cache[label, layer, rows]


summary, features = [], []
labels = list(by)
for i, a in enumerate(labels):
    for b in labels[i + 1 :]:
        rows = matching_rows(m["rows"], by[a], by[b])
        if rows is None:
            continue
        pairs = layer_pairs(
            {a: by[a]["layers"], b: by[b]["layers"]},
            {a: by[a]["n_layers"], b: by[b]["n_layers"]},
            max_gap=s["max_gap"],
        )
        seq_idx = None
        if rows == "sequence":
            n_seq = len(pd.read_parquet(by[a]["files"]["sequences"], columns=["name"]))
            for k in (a, b):
                if len(stores[k].seq_offsets) - 1 != n_seq:
                    raise SaeflowError(
                        f"{by[k]['files']['activations']}: {len(stores[k].seq_offsets) - 1} sequences "
                        f"but {by[a]['files']['sequences']} lists {n_seq}"
                    )
            seq_idx = sample_rows(n_seq, m["max_rows"], m["seed"])
        for pair in pairs.to_dict("records"):
            A, B = (
                codes(a, pair["layer_a"], rows, seq_idx),
                codes(b, pair["layer_b"], rows, seq_idx),
            )
            if rows == "gene":  # genes both vocabularies hold, by name
                ia, ib, _ = shared_rows(A.index, B.index)
                pick = sample_rows(len(ia), m["max_rows"], m["seed"])
                A, B = A.to_numpy()[ia[pick]], B.to_numpy()[ib[pick]]
            row, feats = match_pair(
                A, B, pair, rows, threshold=m["threshold"], n_null=m["n_null"], seed=m["seed"]
            )
            summary.append(row)
            features.append(feats)
table = pd.DataFrame(summary, columns=MATCH_SUMMARY_COLUMNS)
write_table(table, snakemake.output.table)
write_table(
    pd.concat(features, ignore_index=True) if features else pd.DataFrame(),
    snakemake.output.features,
)
plot_matching(
    table, snakemake.output.plot, title=f"{w.comparison}: feature matching vs row-shuffled null"
)

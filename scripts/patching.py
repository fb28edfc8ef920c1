import logging
import os

import numpy as np
import pandas as pd
import torch

from saeflow.dna.counterfactual import counterfactual_pairs
from saeflow.dna.evidence import (
    load_motifs,
    patching,
    same_spans,
    summarise_patching,
    train_readout,
)
from saeflow.dna.evidence_plots import patching_heatmap
from saeflow.dna.motifscan import scan
from saeflow.models import load_model
from saeflow.utils import setup_job, torch_device, write_table

setup_job(snakemake)
log = logging.getLogger("patching")
torch.set_num_threads(snakemake.threads)
i, ev, p, w = snakemake.input, snakemake.params.evidence, snakemake.params, snakemake.wildcards
adapter = load_model(os.path.join(i.model, p.subfolder), device=torch_device(), family=p.family)
sequences = pd.read_parquet(i.sequences)
wt, b, auc = train_readout(adapter, sequences, batch_size=ev["batch_size"], seed=ev["seed"])
log.info("readout (label probe on the last layer, mean-pooled): held-out AUROC %.3f", auc)
rng = np.random.default_rng(ev["seed"])


def same_tokens(clean: str, corrupted: str, start: int, end: int) -> bool:
    """A BPE tokeniser (DNABERT-2) may re-segment the corrupted copy beyond the site or change its token
    count: redraw the site until it does not (evidence.same_spans)."""
    return bool(
        same_spans(adapter.tokenize([clean]), adapter.tokenize([corrupted]), [start], [end])[0]
    )


pair_tables, per_pair = [], []
for m in load_motifs(ev["motifs"], ev["jaspar_release"], ev["pseudocount"], ev["threshold"]):
    # a seeded sample of the sequences with a hit (destroying a site rescans the sequence: sample first)
    best = scan(sequences.sequence.tolist(), m.pssm).score
    with_hit = np.flatnonzero((best >= np.float32(m.threshold)).any(axis=1))
    if len(with_hit) > ev["patching_pairs"]:
        with_hit = np.sort(rng.choice(with_hit, ev["patching_pairs"], replace=False))
    sub = sequences.iloc[with_hit]
    pairs = counterfactual_pairs(
        sub.sequence.tolist(),
        m.pssm,
        m.threshold,
        names=sub.name.tolist(),
        seed=ev["seed"],
        accept=same_tokens,
    )
    log.info(
        "%s: %d counterfactual pairs (%d could not be made)",
        m.matrix_id,
        len(pairs),
        pairs.corrupted.isna().sum(),
    )
    pp, pairs = patching(
        adapter,
        pairs,
        wt,
        b,
        batch_size=ev["batch_size"],
        min_gap=ev["patching_min_gap"],
        seed=ev["seed"],
    )
    log.info(
        "%s: %d of %d pairs tokenise to the same spans and were patched",
        m.matrix_id,
        pairs.kept.sum(),
        len(pairs),
    )
    if len(pairs) and not pairs.kept.any():
        log.warning(
            "%s: no pair could be patched (every corrupted copy tokenised to different spans)",
            m.matrix_id,
        )
    pair_tables.append(pairs.assign(motif=m.matrix_id, readout_auroc=auc))
    per_pair.append(pp.assign(motif=m.matrix_id))
per_pair = pd.concat(per_pair, ignore_index=True)
summary = summarise_patching(per_pair)
write_table(pd.concat(pair_tables, ignore_index=True), snakemake.output.pairs)
write_table(per_pair, snakemake.output.per_pair)
write_table(summary, snakemake.output.table)
patching_heatmap(
    summary, snakemake.output.plot, title=f"{w.model} / {w.dataset}: activation patching (mean PM)"
)

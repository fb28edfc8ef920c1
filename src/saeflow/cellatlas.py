"""The single-cell feature atlas of one SAE: per layer (:func:`analyse_layer`), then across layers
(:func:`summarise`). The rules ``cell_features`` and ``cell_summary`` call these two functions; the
statistics live in :mod:`saeflow.cellfeatures`, :mod:`saeflow.modules` and :mod:`saeflow.enrichment`.

Per layer, one streaming pass over the activations (:func:`saeflow.cellfeatures.stream_cell_features`)
feeds everything:

* ``features.parquet``: per feature firing frequency, mean/max activation, alive, SVD alignment
  (max |cos| with the top singular directions), annotated (a gene-set term at q < alpha), its
  co-activation module;
* ``top_genes.parquet`` / ``top_cells.parquet``: the genes with the highest mean activation at
  their tokens (with a minimum count), the cells with the highest mean activation;
* ``celltypes.parquet``: Fisher's one-sided test of each feature's top cells against each cell
  label, BH over features x labels (when the dataset has labels);
* ``enrichment.parquet``: each feature's top genes against every gene set of every configured
  library, background = the genes the model saw in these cells, BH over the whole family (every
  (feature, set) test of every library of the layer, zero overlaps included);
* ``modules.parquet``: co-activation modules (positive PMI of features co-firing on the same token,
  over a seeded sample of whole cells; Leiden) with each module's most common annotation;
* ``layer.json``: the layer's summary row, the SVD comparison and the annotation rate of novel vs
  SVD-aligned features.

Across layers: cross-layer tracking of decoder rows (cosine 0.7 / 0.9: transient, moderate,
persistent) and the per-layer table (Features, Alive, Annotated, Ann%, Enrichments, one column per
library, Modules, Persistent/Moderate/Transient) with its figure.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .utils import SaeflowError, atomic_path, read_json, write_json

log = logging.getLogger(__name__)


def enrich_top_genes(top: pd.DataFrame, libraries: dict[str, dict[str, list[str]]], background,
                     min_size: int = 5, max_size: int = 500) -> tuple[pd.DataFrame, int]:
    """Each feature's top genes (``top``: columns feature, gene) against every set of ``libraries``.

    :func:`saeflow.enrichment.overrepresentation`: one hypergeometric family over all features x all
    sets of all libraries, BH over every test (zero overlaps included). Returns (table, family size).
    """
    from . import enrichment

    hits = {int(f): g.gene.astype(str).tolist() for f, g in top.groupby("feature")}
    df = enrichment.overrepresentation(hits, libraries, background, min_size=min_size, max_size=max_size)
    family = int(df.attrs.get("family_size", 0))
    df = df.astype({"feature": np.int64, "library": str, "term": str})
    return df, family


def analyse_layer(sae_dir, acts_dir, table_path, layer: int, gmts: dict[str, str], params: dict, out_dir) -> dict:
    """Everything of one layer (see the module docstring); returns the summary row."""
    from . import cellfeatures as cf
    from . import modules
    from .activations import ActivationStore
    from .sae import load_sae

    p = dict(top_genes=20, min_gene_count=10, top_cells=20, top_fraction=0.05, alpha=0.05, min_set_size=5,
             max_set_size=500, svd_components=50, svd_threshold=0.5, svd_sample=20000, module_min_cooccurrence=5,
             module_pmi=1.0, module_min_size=3, module_max_tokens=200_000, seed=0)
    p.update(params or {})
    sae = load_sae(sae_dir)
    store = ActivationStore(acts_dir)
    table = pd.read_parquet(table_path)
    if len(table) != store.manifest.get("n_sequences", len(table)):
        raise SaeflowError(f"{table_path}: {len(table)} cells, but {acts_dir} holds {store.manifest['n_sequences']}")
    stats = cf.stream_cell_features(sae, store, layer, seed=p["seed"], cooccurrence=True,
                                    cooccurrence_max_tokens=p["module_max_tokens"])
    feats = cf.feature_table(stats)
    top = cf.top_genes(stats, top_n=p["top_genes"], min_count=p["min_gene_count"])
    labels = table["label"].astype(str).to_numpy() if "label" in table else np.array([""] * len(table))
    cells_top = cf.top_cells(stats, top_n=p["top_cells"], names=table["name"].astype(str).to_numpy(), labels=labels)
    has_labels = (labels != "").any()
    celltypes = (cf.celltype_enrichment(stats.cell_mean(), labels, top_fraction=p["top_fraction"],
                                        universe=stats.cells_used) if has_labels else pd.DataFrame())
    # SVD vs SAE on a sample of this layer's tokens
    x = cf.sample_rows(store, layer, p["svd_sample"], seed=p["seed"])
    svd_feats, svd_summary = cf.svd_comparison(sae, x, n_components=p["svd_components"], threshold=p["svd_threshold"],
                                               alive=feats.alive.to_numpy(bool))
    feats = feats.merge(svd_feats, on="feature", how="left")
    # gene-set enrichment of the top genes; background: the genes the model saw
    from .enrichment import read_gmt

    libraries = {name: read_gmt(path) for name, path in gmts.items()}
    if libraries and len(top):
        enr, family = enrich_top_genes(top, libraries, stats.genes[stats.gene_tokens > 0],
                                       min_size=p["min_set_size"], max_size=p["max_set_size"])
    else:
        enr, family = pd.DataFrame(columns=["feature", "library", "term", "q"]), 0
    sig = enr[enr.q.astype(float) < p["alpha"]] if len(enr) else enr
    annotated = np.zeros(len(feats), bool)
    annotated[sig.feature.astype(int).unique()] = True
    feats["annotated"] = annotated & feats.alive.to_numpy(bool)
    # co-activation modules: features co-firing on the same token (a cell's tokens are its genes, so
    # within-cell co-occurrence would make nearly every pair co-fire in a model with long cells)
    mods, membership, _ = modules.coactivation_modules(stats.cooc, stats.cooc_units,
                                                       min_count=p["module_min_cooccurrence"],
                                                       pmi_threshold=p["module_pmi"], min_size=p["module_min_size"],
                                                       seed=p["seed"])
    feats = feats.merge(membership, on="feature", how="left") if len(membership) else feats.assign(module=-1)
    if len(sig) and len(mods):
        terms = pd.DataFrame({"feature": sig.feature.astype(int).to_numpy(),
                              "term": (sig.library.astype(str) + ":" + sig.term.astype(str)).to_numpy()})
        mt = modules.module_terms(membership, terms)
        mods = mods.merge(mt[["module", "term", "count", "fraction"]], on="module", how="left")
    align = cf.annotation_by_alignment(feats.svd_aligned.to_numpy(bool), feats.annotated.to_numpy(bool),
                                       alive=feats.alive.to_numpy(bool))
    row = cf.layer_summary(layer, feats, enrichment=enr if libraries else None, libraries=list(libraries) or None,
                           modules=mods)
    if has_labels and len(celltypes):
        row["CellTypeFeatures"] = int(celltypes[celltypes.q < p["alpha"]].feature.nunique())
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        feats.to_parquet(tmp / "features.parquet", index=False)
        top.to_parquet(tmp / "top_genes.parquet", index=False)
        cells_top.to_parquet(tmp / "top_cells.parquet", index=False)
        celltypes.to_parquet(tmp / "celltypes.parquet", index=False)
        enr.to_parquet(tmp / "enrichment.parquet", index=False)
        mods.to_parquet(tmp / "modules.parquet", index=False)
        write_json(tmp / "layer.json", {"summary": row, "svd": svd_summary, "annotation_by_alignment": align,
                                        "enrichment_family_size": int(family), "libraries": list(libraries),
                                        "n_cells": int(stats.cells_used.sum()), "n_tokens": int(stats.n_tokens)})
    log.info("layer %d: %s", layer, row)
    return row


def summarise(layer_dirs: list, sae_dirs: list, layers: list[int], out_table, out_plot, out_tracking=None) -> pd.DataFrame:
    """Cross-layer tracking + the per-layer table and its figure."""
    from . import cellfeatures as cf
    from . import modules, plots

    if not (len(layer_dirs) == len(sae_dirs) == len(layers)):
        raise SaeflowError("summarise: one layer directory and one SAE directory per layer")
    order = np.argsort(layers)
    layers = [int(layers[i]) for i in order]
    layer_dirs = [Path(layer_dirs[i]) for i in order]
    sae_dirs = [sae_dirs[i] for i in order]
    alive = {L: pd.read_parquet(d / "features.parquet").alive.to_numpy(bool) for L, d in zip(layers, layer_dirs)}
    if len(layers) > 1:
        tracking, _ = modules.track_features(dict(zip(layers, sae_dirs)), alive=alive)
    else:
        tracking = pd.DataFrame(columns=["layer", "feature", "class"])
    rows = []
    for L, d in zip(layers, layer_dirs):
        info = read_json(d / "layer.json")
        row = dict(info["summary"])
        tr = tracking[tracking.layer == L] if len(tracking) else None
        for cls in ("persistent", "moderate", "transient"):
            row[cls.capitalize()] = int((tr["class"] == cls).sum()) if tr is not None and len(tr) else np.nan
        row["SVDVarExpl"] = info["svd"].get("svd_var_explained")
        row["SAEVarExpl"] = info["svd"].get("sae_var_explained")
        rows.append(row)
    table = cf.summary_table(rows)
    with atomic_path(out_table) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    if out_tracking is not None:
        with atomic_path(out_tracking) as tmp:
            tracking.to_csv(tmp, sep="\t", index=False)
    plots.cell_summary(table, out_plot)
    return table

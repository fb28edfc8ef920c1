"""The single-cell feature atlas of one SAE: per layer (:func:`analyse_layer`), then across layers
(:func:`summarise`). The rules ``cell_features`` and ``cell_summary`` call these two functions; the
statistics live in :mod:`saeflow.cells.features`, :mod:`saeflow.sae.modules` and
:mod:`saeflow.cells.enrichment`.

Per layer, one streaming pass over the activations
(:func:`saeflow.cells.features.stream_cell_features`)
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
* ``histogram.npy``: per feature, counts of its activations on the fixed log bins of
  :mod:`saeflow.histogram`;
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
from pathlib import Path

import numpy as np
import pandas as pd

from saeflow.stats import bh
from saeflow.utils import SaeflowError, atomic_path, read_json, write_json

log = logging.getLogger(__name__)


def enrich_top_genes(
    top: pd.DataFrame,
    libraries: dict[str, dict[str, list[str]]],
    background,
    min_size: int = 5,
    max_size: int = 500,
) -> tuple[pd.DataFrame, int]:
    """Each feature's top genes (``top``: columns feature, gene) against every set of ``libraries``.

    :func:`saeflow.cells.enrichment.overrepresentation`: one hypergeometric family over all features
    x all sets of all libraries, BH over every test (zero overlaps included). Returns (table, family
    size)."""
    from saeflow.cells import enrichment

    col = "symbol" if "symbol" in top else "gene"
    hits = {int(f): g[col].astype(str).tolist() for f, g in top.groupby("feature")}
    df = enrichment.overrepresentation(
        hits, libraries, background, min_size=min_size, max_size=max_size
    )
    family = int(df.attrs.get("family_size", 0))
    df = df.astype({"feature": np.int64, "library": str, "term": str})
    return df, family


def gene_symbol_map(cells_h5ad) -> dict[str, str]:
    """Gene id -> symbol from the prepared cells' ``var`` (``gene_id``, ``gene_symbol``); empty when
    the data have no symbols. Geneformer's tokens are Ensembl ids while gene-set libraries, TRRUST
    and STRING name genes by symbol: enrichment must speak the libraries' language."""
    import anndata

    var = anndata.read_h5ad(cells_h5ad, backed="r").var
    if "gene_symbol" not in var or "gene_id" not in var:
        return {}
    ids, syms = var["gene_id"].astype(str).to_numpy(), var["gene_symbol"].astype(str).to_numpy()
    return {i: s for i, s in zip(ids, syms) if i and s and s != "nan"}


def _cell_rows(store, cells: np.ndarray) -> np.ndarray:
    """Token rows of the given cells (global cell ids), through the store's per-cell offsets."""
    off = np.asarray(store.seq_offsets, dtype=np.int64)
    starts, ends = off[cells], off[cells + 1]
    lens = ends - starts
    return np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(
        lens.sum()
    )


def joint_bh(ora: pd.DataFrame, ora_family: int, networks: dict[str, pd.DataFrame]) -> int:
    """One Benjamini-Hochberg family over the gene-set tests and the network tests of a layer.

    ``ora``: the stored over-representation rows (tests with zero overlap are not stored but
    counted in ``ora_family``; their p = 1 cannot lower anyone's q); ``networks``: one
    :func:`saeflow.cells.enrichment.edge_enrichment` table per network (every feature tested, all
    rows stored). The ``q`` columns are replaced in place by the joint q; returns the family size.
    """

    parts = [ora.p.to_numpy(float) if len(ora) else np.zeros(0)]
    parts += [df.p.to_numpy(float) for df in networks.values()]
    family = int(ora_family) + sum(int(df.p.notna().sum()) for df in networks.values())
    if family == 0:
        return 0
    q = bh(np.concatenate(parts), m=family)
    i = len(parts[0])
    if len(ora):
        ora["q"] = q[:i]
    for df in networks.values():
        df["q"] = q[i : i + len(df)]
        i += len(df)
    return family


def network_enrichment(
    top: pd.DataFrame,
    tables: dict[str, str],
    directed: dict[str, bool],
    background,
    *,
    n_perm: int,
    seed: int = 0,
    features=None,
) -> dict[str, pd.DataFrame]:
    """Each feature's top genes against each network (edges
    among them vs degree-preserving nulls)."""
    from saeflow.cells import enrichment

    col = "symbol" if "symbol" in top else "gene"
    hits = {int(f): g[col].astype(str).tolist() for f, g in top.groupby("feature")}
    out = {}
    for name, path in tables.items():
        d = bool(directed[name])
        edges = enrichment.read_trrust(path) if d else enrichment.read_string(path)
        df = enrichment.edge_enrichment(
            hits,
            edges,
            background,
            directed=d,
            network=name,
            n_perm=n_perm,
            seed=seed,
            features=features,
            list_q_max=None,
        )
        out[name] = df
    return out


def analyse_layer(
    sae_dir,
    acts_dir,
    table_path,
    layer: int,
    gmts: dict[str, str],
    params: dict,
    out_dir,
    networks: dict[str, str] | None = None,
    directed: dict[str, bool] | None = None,
    symbols: dict[str, str] | None = None,
) -> dict:
    """Everything of one layer (see the module docstring); returns the summary row.

    ``networks``: name -> edge table (TRRUST / STRING), ``directed``: name -> TF -> target edges.
    ``symbols``: gene id -> symbol (:func:`gene_symbol_map`); when given, ``top_genes`` gains a
    ``symbol`` column and the gene sets and networks are tested on symbols (background included).
    """
    from saeflow.activations import ActivationStore
    from saeflow.cells import features as cf
    from saeflow.sae import load_sae, modules

    p = dict(
        top_genes=20,
        min_gene_count=10,
        top_cells=20,
        top_fraction=0.05,
        alpha=0.05,
        min_set_size=5,
        max_set_size=500,
        svd_components=50,
        svd_threshold=0.5,
        svd_sample=20000,
        module_min_cooccurrence=5,
        module_pmi=1.0,
        module_min_size=3,
        module_max_tokens=200_000,
        network_permutations=1000,
        seed=0,
    )
    p.update(params or {})
    sae = load_sae(sae_dir)
    store = ActivationStore(acts_dir)
    table = pd.read_parquet(table_path)
    if len(table) != store.manifest.get("n_sequences", len(table)):
        raise SaeflowError(
            f"{table_path}: {len(table)} cells, but {acts_dir} holds "
            f"{store.manifest['n_sequences']}"
        )
    # the atlas: the train/test cells (a Perturb-seq screen's controls), never the perturbed cells
    atlas = (
        (table.split != "perturbed").to_numpy() if "split" in table else np.ones(len(table), bool)
    )
    stats = cf.stream_cell_features(
        sae,
        store,
        layer,
        cells=atlas,
        seed=p["seed"],
        cooccurrence=True,
        cooccurrence_max_tokens=p["module_max_tokens"],
    )
    feats = cf.feature_table(stats)
    top = cf.top_genes(stats, top_n=p["top_genes"], min_count=p["min_gene_count"])
    labels = (
        table["label"].astype(str).to_numpy() if "label" in table else np.array([""] * len(table))
    )
    cells_top = cf.top_cells(
        stats, top_n=p["top_cells"], names=table["name"].astype(str).to_numpy(), labels=labels
    )
    has_labels = (labels != "").any()
    celltypes = (
        cf.celltype_enrichment(
            stats.cell_mean(), labels, top_fraction=p["top_fraction"], universe=stats.cells_used
        )
        if has_labels
        else pd.DataFrame()
    )
    # SVD vs SAE on a sample of this layer's tokens
    x = cf.sample_activations(
        store,
        layer,
        p["svd_sample"],
        seed=p["seed"],
        rows=None if atlas.all() else _cell_rows(store, np.flatnonzero(atlas)),
    )
    svd_feats, svd_summary = cf.svd_comparison(
        sae,
        x,
        n_components=p["svd_components"],
        threshold=p["svd_threshold"],
        alive=feats.alive.to_numpy(bool),
    )
    feats = feats.merge(svd_feats, on="feature", how="left")
    # gene-set enrichment of the top genes; background: the genes the model saw
    from saeflow.cells.enrichment import read_gmt

    libraries = {name: read_gmt(path) for name, path in gmts.items()}
    background = stats.genes[stats.gene_tokens > 0]
    if symbols:
        top["symbol"] = [symbols.get(g, g) for g in top.gene.astype(str)]
        background = np.unique([symbols.get(str(g), str(g)) for g in background])
    if libraries and len(top):
        enr, ora_family = enrich_top_genes(
            top, libraries, background, min_size=p["min_set_size"], max_size=p["max_set_size"]
        )
    else:
        enr, ora_family = pd.DataFrame(columns=["feature", "library", "term", "p", "q"]), 0
    # networks (TRRUST, STRING): edges among the top genes vs degree-preserving nulls; the same BH
    # family as the gene sets, so "annotated" is one call at one FDR over every test of the layer
    nets = {}
    if networks and len(top):
        nets = network_enrichment(
            top,
            networks,
            directed or {},
            background,
            n_perm=p["network_permutations"],
            seed=p["seed"],
        )
    family = joint_bh(enr, ora_family, nets)
    sig = enr[enr.q.astype(float) < p["alpha"]] if len(enr) else enr
    annotated = np.zeros(len(feats), bool)
    annotated[sig.feature.astype(int).unique()] = True
    net_sig = {name: df[df.q < p["alpha"]] for name, df in nets.items()}
    for df in net_sig.values():
        annotated[df.feature.astype(int).unique()] = True
    feats["annotated"] = annotated & feats.alive.to_numpy(bool)
    # co-activation modules: features co-firing on the same token (a cell's tokens are its genes, so
    # within-cell co-occurrence would make nearly every pair co-fire in a model with long cells)
    mods, membership, _ = modules.coactivation_modules(
        stats.cooc,
        stats.cooc_units,
        min_count=p["module_min_cooccurrence"],
        pmi_threshold=p["module_pmi"],
        min_size=p["module_min_size"],
        seed=p["seed"],
    )
    feats = (
        feats.merge(membership, on="feature", how="left")
        if len(membership)
        else feats.assign(module=-1)
    )
    if (len(sig) or any(len(d) for d in net_sig.values())) and len(mods):
        terms = pd.DataFrame(
            {
                "feature": np.concatenate(
                    [sig.feature.astype(int).to_numpy()]
                    + [d.feature.astype(int).to_numpy() for d in net_sig.values()]
                ),
                "term": np.concatenate(
                    [(sig.library.astype(str) + ":" + sig.term.astype(str)).to_numpy()]
                    + [np.array([f"{n}:edges"] * len(d), dtype=object) for n, d in net_sig.items()]
                ),
            }
        )
        mt = modules.module_terms(membership, terms)
        mods = mods.merge(mt[["module", "term", "count", "fraction"]], on="module", how="left")
    align = cf.annotation_by_alignment(
        feats.svd_aligned.to_numpy(bool),
        feats.annotated.to_numpy(bool),
        alive=feats.alive.to_numpy(bool),
    )
    row = cf.layer_summary(
        layer,
        feats,
        enrichment=enr if libraries else None,
        libraries=list(libraries) or None,
        modules=mods,
    )
    for name, d in net_sig.items():
        row[name] = int(d.feature.nunique())
    if nets:  # Annotated / Ann% count network annotations too
        alive = feats.alive.to_numpy(bool)
        row["Annotated"] = int((feats.annotated.to_numpy(bool) & alive).sum())
        row["Ann%"] = 100.0 * row["Annotated"] / max(1, int(alive.sum()))
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
        # per-feature activation histograms (the atlas's feature pages)
        if stats.act_hist is not None:
            np.save(tmp / "histogram.npy", stats.act_hist)
        if nets:
            pd.concat(list(nets.values()), ignore_index=True).to_parquet(
                tmp / "networks.parquet", index=False
            )
        write_json(
            tmp / "layer.json",
            {
                "summary": row,
                "svd": svd_summary,
                "annotation_by_alignment": align,
                "enrichment_family_size": int(family),
                "libraries": list(libraries),
                "networks": list(nets),
                "n_atlas_cells": int(atlas.sum()),
                "n_cells": int(stats.cells_used.sum()),
                "n_tokens": int(stats.n_tokens),
            },
        )
    log.info("layer %d: %s", layer, row)
    return row


def summarise(
    layer_dirs: list, sae_dirs: list, layers: list[int], out_table, out_plot, out_tracking=None
) -> pd.DataFrame:
    """Cross-layer tracking + the per-layer table and its figure."""
    from saeflow import plots
    from saeflow.cells import features as cf
    from saeflow.sae import modules

    if not (len(layer_dirs) == len(sae_dirs) == len(layers)):
        raise SaeflowError("summarise: one layer directory and one SAE directory per layer")
    order = np.argsort(layers)
    layers = [int(layers[i]) for i in order]
    layer_dirs = [Path(layer_dirs[i]) for i in order]
    sae_dirs = [sae_dirs[i] for i in order]
    alive = {
        L: pd.read_parquet(d / "features.parquet").alive.to_numpy(bool)
        for L, d in zip(layers, layer_dirs)
    }
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
            row[cls.capitalize()] = (
                int((tr["class"] == cls).sum()) if tr is not None and len(tr) else np.nan
            )
        row["SVDVarExpl"] = info["svd"].get("svd_var_explained")
        row["SAEVarExpl"] = info["svd"].get("sae_var_explained")
        al = info.get("annotation_by_alignment", {})
        row["AlignedAnn%"] = (
            100.0 * al["aligned_rate"]
            if al.get("aligned_rate") == al.get("aligned_rate")
            else np.nan
        )
        row["NovelAnn%"] = (
            100.0 * al["novel_rate"] if al.get("novel_rate") == al.get("novel_rate") else np.nan
        )
        rows.append(row)
    table = cf.summary_table(rows)
    with atomic_path(out_table) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    if out_tracking is not None:
        with atomic_path(out_tracking) as tmp:
            tracking.to_csv(tmp, sep="\t", index=False)
    plots.cell_summary(table, out_plot)
    return table


# --- Perturb-seq ---------------------------------------------------------------------------


def analyse_perturbations(
    sae_dir,
    acts_dir,
    table_path,
    cells_dir,
    layer: int,
    control: str,
    trrust: dict[str, str],
    params: dict,
    out_dir,
    *,
    min_cells: int = 10,
    max_rows: int = 5_000_000,
) -> pd.DataFrame:
    """Perturbation response and regulatory logic of one layer; returns the per-target table.

    Per-cell activation = mean over the cell's tokens (:meth:`CellFeatureStats.cell_mean`); each
    target's ``perturbed`` cells are compared with the control cells of the atlas
    (:func:`saeflow.cells.features.perturbation_response`: Mann-Whitney U per alive feature, BH over
    every (target, feature) test of the layer). For each TF of a TRRUST network (``trrust``: name ->
    edge table) that was perturbed: :func:`saeflow.cells.features.regulatory_logic` with the
    features' top genes from the atlas (``cells_dir``), q: BH over every (network, TF) tested.

    Writes ``response.parquet`` (every test; when there are more than ``max_rows`` only those with
    q < 0.25 are kept, the BH having been done over all of them), ``targets.parquet`` (per target:
    cells, features tested, responding up/down at q < alpha, strongest effect),
    ``regulatory.parquet``
    and ``layer.json``.
    """
    from saeflow.activations import ActivationStore
    from saeflow.cells import features as cf
    from saeflow.cells.enrichment import read_trrust
    from saeflow.sae import load_sae

    p = dict(alpha=0.05, max_control_cells=2000, regulatory_permutations=10000, seed=0)
    p.update(params or {})
    table = pd.read_parquet(table_path)
    for c in ("split", "perturbation"):
        if c not in table:
            raise SaeflowError(f"{table_path}: no column {c!r}; prepare the cells again")
    store = ActivationStore(acts_dir)
    if len(table) != store.manifest.get("n_sequences", len(table)):
        raise SaeflowError(
            f"{table_path}: {len(table)} cells, but {acts_dir} holds "
            f"{store.manifest['n_sequences']}"
        )
    split, pert = table.split.to_numpy(str), table.perturbation.astype(str).to_numpy()
    ctrl = (split != "perturbed") & (pert == control)
    perturbed = split == "perturbed"
    if not perturbed.any():
        raise SaeflowError(
            f"{table_path}: no perturbed cells (set the dataset's perturbed_cells_per_target)"
        )
    if ctrl.sum() < 2:
        raise SaeflowError(f"{table_path}: {int(ctrl.sum())} control cells labelled {control!r}")
    labels = np.where(perturbed, pert, np.where(ctrl, control, ""))
    feats = pd.read_parquet(Path(cells_dir) / "features.parquet")
    alive = feats.feature.to_numpy()[feats.alive.to_numpy(bool)]
    sae = load_sae(sae_dir)
    stats = cf.stream_cell_features(sae, store, layer, cells=perturbed | ctrl, seed=p["seed"])
    labels = np.where(stats.cells_used, labels, "")  # cells with no token stay out
    resp = cf.perturbation_response(
        stats.cell_mean(),
        labels,
        control,
        min_cells=min_cells,
        max_control_cells=p["max_control_cells"],
        features=alive,
        seed=p["seed"],
    )
    alpha = p["alpha"]
    sig = resp[resp.q < alpha]
    counts = pd.Series(labels[labels != ""]).value_counts()
    targets = pd.DataFrame({"target": [t for t in counts.index if t != control]})
    targets["n_cells"] = targets.target.map(counts).astype(int)
    g = resp.groupby("target")
    targets["tested"] = (
        targets.target.map(g.p.apply(lambda x: int(np.isfinite(x).sum()))).fillna(0).astype(int)
    )
    gs = sig.groupby("target")
    targets["up"] = (
        targets.target.map(gs.rank_biserial.apply(lambda x: int((x > 0).sum())))
        .fillna(0)
        .astype(int)
    )
    targets["down"] = (
        targets.target.map(gs.rank_biserial.apply(lambda x: int((x < 0).sum())))
        .fillna(0)
        .astype(int)
    )
    targets["responding"] = targets.up + targets.down
    targets["max_abs_rank_biserial"] = targets.target.map(
        g.rank_biserial.apply(lambda x: float(np.nanmax(np.abs(x))) if len(x) else np.nan)
    )
    targets["min_q"] = targets.target.map(g.q.min())
    targets["layer"] = int(layer)
    # regulatory logic: for TFs with TRRUST targets
    top = pd.read_parquet(Path(cells_dir) / "top_genes.parquet")
    regs = []
    for name, path in trrust.items():
        edges = read_trrust(path).rename(columns={"source": "tf"})
        fg = (
            top[["feature", "symbol"]].rename(columns={"symbol": "gene"})
            if "symbol" in top
            else top[["feature", "gene"]]
        )
        r = cf.regulatory_logic(
            resp,
            fg,
            edges[["tf", "target"]],
            alpha=alpha,
            n_perm=p["regulatory_permutations"],
            seed=p["seed"],
        )
        regs.append(r.assign(network=name))
    reg = (
        pd.concat(regs, ignore_index=True)
        if regs
        else pd.DataFrame(columns=[*cf.REGULATORY_COLUMNS, "network"])
    )
    if len(reg):
        # one family over every (network, TF) tested (NaN: untested)
        reg["q"] = bh(reg.p.to_numpy(float))
        reg["layer"] = int(layer)
    kept = "all"
    if len(resp) > max_rows:
        resp, kept = resp[resp.q < 0.25], "q < 0.25"
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        resp.to_parquet(tmp / "response.parquet", index=False)
        targets.to_parquet(tmp / "targets.parquet", index=False)
        reg.to_parquet(tmp / "regulatory.parquet", index=False)
        write_json(
            tmp / "layer.json",
            {
                "layer": int(layer),
                "control": control,
                "n_control": int(ctrl.sum()),
                "n_perturbed": int(perturbed.sum()),
                "tests": int(np.isfinite(resp.p.to_numpy(float)).sum()) if kept == "all" else None,
                "response_rows": kept,
                "alpha": alpha,
                "networks": list(trrust),
            },
        )
    log.info(
        "layer %d: %d targets, %d responding (target, feature) pairs at q < %g; %d TFs tested for "
        "regulatory logic",
        layer,
        len(targets),
        len(sig),
        alpha,
        int(np.isfinite(reg.p.to_numpy(float)).sum()) if len(reg) else 0,
    )
    return targets


def summarise_perturbations(
    layer_dirs: list, layers: list[int], out_table, out_plot, out_regulatory, alpha: float = 0.05
) -> pd.DataFrame:
    """Per (target, layer) responding features and per (TF,
    layer) regulatory logic, with a figure."""
    from saeflow import plots

    if len(layer_dirs) != len(layers):
        raise SaeflowError("summarise_perturbations: one directory per layer")
    targets = pd.concat(
        [pd.read_parquet(Path(d) / "targets.parquet") for d in layer_dirs], ignore_index=True
    )
    regs = [pd.read_parquet(Path(d) / "regulatory.parquet") for d in layer_dirs]
    reg = (
        pd.concat([r for r in regs if len(r)], ignore_index=True)
        if any(len(r) for r in regs)
        else regs[0]
    )
    targets = targets.sort_values(["layer", "target"]).reset_index(drop=True)
    with atomic_path(out_table) as tmp:
        targets.to_csv(tmp, sep="\t", index=False)
    with atomic_path(out_regulatory) as tmp:
        reg.to_csv(tmp, sep="\t", index=False)
    plots.perturbation_summary(targets, reg, out_plot, alpha=alpha)
    return targets

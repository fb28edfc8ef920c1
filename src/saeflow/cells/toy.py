"""The embedded single-cell default: real PBMCs and a tiny Geneformer-style model trained on them.

* :func:`write_pbmc` turns scanpy's shipped ``pbmc68k_reduced`` (700 real PBMCs x 765 genes, no
  network) into the h5ad the cell rules read, and writes the dataset's own marker genes
  (``uns['rank_genes_groups']``, grouped by ``bulk_labels``) as a GMT: the ground truth that
  cell-type features should be enriched for.

  ``pbmc68k_reduced`` keeps no raw counts: ``X`` is scaled (negative values), ``raw.X`` is
  log1p of size-normalised expression. Rank-value encoding only needs each gene's expression
  relative to the cell's total and to the gene's median, so ``expm1(raw.X)`` (normalised
  expression, non-negative) stands in for counts; the h5ad says so in ``uns``.

* :func:`train_toy_geneformer` trains a ``BertForMaskedLM`` over rank-value-encoded cells, the
  Geneformer objective at toy scale: the token dictionary (``<pad>``, ``<mask>``, ``<cls>``,
  ``<eos>`` then one token per gene, V2 layout) and the gene medians (non-zero median of each
  gene's normalised expression) are built from the data and pickled beside the model under the
  names Geneformer uses, so :func:`saeflow.models.load_model` loads it with ``family:
  geneformer``, the loader of the real checkpoints. Genes are keyed by symbol (the dataset has no
  Ensembl ids), so the dataset's ``gene_id_column`` is the symbol column.

* :func:`write_pbmc_crispri` adds simulated CRISPRi cells to those real PBMCs, so the
  perturbation-response and regulatory-logic rules run offline with a known answer (Replogle's
  layout: one obs column names each cell's target, ``non-targeting`` for the controls). The 700 real
  cells are the controls, unchanged; each perturbed cell is a copy of a randomly drawn real cell
  whose target gene is knocked down (x ``tf_knockdown``) and, for the planted regulators, whose
  simulated TRRUST targets change too: the first half (mode Activation) fall (x
  ``target_knockdown``; CRISPRi typically leaves 5-20% of the transcript), the second half (mode
  Repression) rise (x ``target_induction``: de-repressed). The planted design:

  ===========  ===================================  ============================================
  target       what changes                         expected
  ===========  ===================================  ============================================
  SPI1, IRF8,  the TF and its 20 listed targets     responding features, enriched for the TF's
  JUNB                                              targets (regulatory logic)
  EGR1         the TF only (20 targets listed,      few or no responding features, not enriched
               left unchanged)                      for the listed targets
  SHAM         nothing (copies of control cells)    no responding feature (a null target)
  ===========  ===================================  ============================================

  Why both directions: rank-value encoding keeps a cell's top-ranked genes only, and in these 765
  highly variable genes no gene is in the top 64 of more than ~40% of cells, so knock-downs alone
  change a handful of a cell's input tokens; de-repressed genes enter the top ranks of most cells.
  The network is written as a TRRUST-format table (source, target, mode, pmids = "simulated");
  targets are drawn (seeded) among the genes that rank-value encoding puts within a cell's top 64
  most often (what a Geneformer-style model reads), disjoint between TFs. This is a
  simulation on real expression profiles, labelled as such in the h5ad's ``uns``; it tests the
  statistics end to end, it is not a biological claim.
"""

from __future__ import annotations

import logging
import math
import pickle

import numpy as np
import pandas as pd

from saeflow.utils import SaeflowError, atomic_path, write_json

log = logging.getLogger(__name__)

SPECIALS = ["<pad>", "<mask>", "<cls>", "<eos>"]


def write_pbmc(out_h5ad, out_gmt, n_markers: int = 25) -> dict:
    """pbmc68k_reduced -> ``out_h5ad`` (normalised expression, symbols, labels) and ``out_gmt``
    (markers)."""
    import anndata
    import scanpy as sc
    import scipy.sparse as sp

    a = sc.datasets.pbmc68k_reduced()
    raw = a.raw.X
    X = np.expm1(raw.toarray() if sp.issparse(raw) else np.asarray(raw)).astype(np.float32)
    X[X < 0] = 0
    symbols = np.asarray(a.raw.var_names).astype(str)
    obs = pd.DataFrame(
        {
            "bulk_labels": a.obs["bulk_labels"].astype(str).to_numpy(),
            "louvain": a.obs["louvain"].astype(str).to_numpy(),
        },
        index=pd.Index(np.asarray(a.obs_names).astype(str)),
    )
    var = pd.DataFrame({"gene_symbol": symbols}, index=pd.Index(symbols))
    out = anndata.AnnData(X=sp.csr_matrix(X), obs=obs, var=var)
    out.uns["saeflow_note"] = (
        "expm1(raw.X) of scanpy's pbmc68k_reduced: normalised expression, not raw counts"
    )
    with atomic_path(out_h5ad) as tmp:
        out.write_h5ad(tmp)
    names = a.uns["rank_genes_groups"]["names"]
    groups = list(names.dtype.names)
    lines = []
    for g in groups:
        genes = [str(x) for x in names[g][:n_markers]]
        lines.append(
            "\t".join(
                [
                    g,
                    "pbmc68k_reduced rank_genes_groups "
                    f"({a.uns['rank_genes_groups']['params']['method']})",
                    *genes,
                ]
            )
        )
    with atomic_path(out_gmt) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    log.info(
        "pbmc68k_reduced: %d cells x %d genes; %d marker sets of %d genes",
        *X.shape,
        len(groups),
        n_markers,
    )
    return {"cells": int(X.shape[0]), "genes": int(X.shape[1]), "marker_sets": len(groups)}


CRISPRI_DESIGN = {
    "SPI1": True,
    "IRF8": True,
    "JUNB": True,
    "EGR1": False,
}  # TF -> targets knocked down too
SHAM_TARGET = "SHAM"
CONTROL_LABEL = "non-targeting"


def write_pbmc_crispri(
    pbmc_h5ad,
    out_h5ad,
    out_trrust,
    *,
    cells_per_target: int = 60,
    n_targets: int = 20,
    tf_knockdown: float = 0.05,
    target_knockdown: float = 0.1,
    min_expressed: float = 0.1,
    top_ranked: int = 64,
    target_induction: float = 8.0,
    design: dict | None = None,
    seed: int = 0,
) -> dict:
    """``pbmc_h5ad`` (from :func:`write_pbmc`) + simulated CRISPRi cells -> ``out_h5ad`` and a
    TRRUST-format ``out_trrust``; see the module docstring for the planted design.

    ``obs['perturbation']``: the target of each cell (``non-targeting`` for the real cells);
    ``obs['source_cell']``: the real cell a perturbed cell was copied from.
    """
    import anndata
    import scipy.sparse as sp

    design = dict(CRISPRI_DESIGN if design is None else design)
    a = anndata.read_h5ad(pbmc_h5ad)
    X = sp.csr_matrix(a.X, dtype=np.float32)
    genes = np.asarray(a.var_names).astype(str)
    col = {g: j for j, g in enumerate(genes)}
    missing = [t for t in design if t not in col]
    if missing:
        raise SaeflowError(f"{pbmc_h5ad}: simulated CRISPRi targets not among its genes: {missing}")
    rng = np.random.default_rng(seed)
    # targets among the genes a Geneformer-style model reads: those ranked within the top
    # ``top_ranked`` of a cell by rank-value encoding (expression / total / the gene's nonzero
    # median)
    # in at least ``min_expressed`` of the cells, so that knocking them down changes the model's
    # input
    dense = X.toarray()
    norm = dense / np.maximum(dense.sum(1, keepdims=True), 1e-12)
    med = np.array([np.median(c[c > 0]) if (c > 0).any() else np.inf for c in norm.T])
    score = np.where(norm > 0, norm / med, -np.inf)
    ranks = np.argsort(np.argsort(-score, axis=1), axis=1)
    frac = ((ranks < top_ranked) & (norm > 0)).mean(axis=0)
    pool = np.array(
        [j for j in np.argsort(-frac, kind="stable") if genes[j] not in design][
            : 2 * n_targets * len(design)
        ]
    )
    if (
        len(pool) < n_targets * len(design)
        or frac[pool[n_targets * len(design) - 1]] < min_expressed
    ):
        raise SaeflowError(
            f"{pbmc_h5ad}: too few genes within the top {top_ranked} ranks of >= "
            f"{min_expressed:.0%} "
            f"of cells for {n_targets * len(design)} simulated targets"
        )
    drawn = rng.permutation(pool)[: n_targets * len(design)].reshape(len(design), n_targets)
    regulons = {
        tf: list(genes[drawn[i]]) for i, tf in enumerate(design)
    }  # first half activated, then repressed
    blocks, obs_rows = [X], []
    obs = a.obs.copy()
    obs["perturbation"] = CONTROL_LABEL
    obs["source_cell"] = np.asarray(a.obs_names).astype(str)
    for tf in [*design, SHAM_TARGET]:
        src = np.sort(rng.choice(X.shape[0], cells_per_target, replace=False))
        block = X[src].toarray()
        if tf != SHAM_TARGET:
            block[:, col[tf]] *= tf_knockdown
            if design[tf]:
                half = n_targets // 2
                block[:, [col[g] for g in regulons[tf][:half]]] *= (
                    target_knockdown  # activated by the TF
                )
                block[:, [col[g] for g in regulons[tf][half:]]] *= (
                    target_induction  # repressed by it
                )
        blocks.append(sp.csr_matrix(block))
        o = a.obs.iloc[src].copy()
        o["perturbation"] = tf
        o["source_cell"] = np.asarray(a.obs_names[src]).astype(str)
        o.index = pd.Index([f"{tf}_{i}" for i in range(len(src))])
        obs_rows.append(o)
    obs = pd.concat([obs, *obs_rows])
    out = anndata.AnnData(X=sp.vstack(blocks).tocsr(), obs=obs, var=a.var.copy())
    out.uns["saeflow_note"] = (
        f"{a.uns.get('saeflow_note', '')}; plus SIMULATED CRISPRi cells (copies of real cells "
        f"with knocked-down genes: TF x{tf_knockdown}, planted targets x{target_knockdown})"
    )
    with atomic_path(out_h5ad) as tmp:
        out.write_h5ad(tmp)
    edges = pd.DataFrame(
        [
            (tf, g, "Activation" if i < n_targets // 2 else "Repression", "simulated")
            for tf, gs in regulons.items()
            for i, g in enumerate(gs)
        ],
        columns=["source", "target", "mode", "pmids"],
    )
    with atomic_path(out_trrust) as tmp:
        edges.to_csv(tmp, sep="\t", index=False)
    log.info(
        "pbmc68k_crispri: %d control + %d perturbed cells (%s + %s, %d each)",
        X.shape[0],
        out.n_obs - X.shape[0],
        ", ".join(design),
        SHAM_TARGET,
        cells_per_target,
    )
    return {
        "controls": int(X.shape[0]),
        "perturbed": int(out.n_obs - X.shape[0]),
        "regulons": regulons,
    }


def write_pbmc_tissue(
    pbmc_h5ad,
    out_h5ad,
    *,
    n_cells: int = 1000,
    n_programme: int = 30,
    programme_gain: float = 4.0,
    label_column: str = "bulk_labels",
    seed: int = 1,
) -> dict:
    """A SIMULATED second "tissue" from the cells of ``pbmc_h5ad`` (from :func:`write_pbmc`): the
    offline stand-in for Tabula Sapiens in a pooled dataset (the default's ``pbmc_pooled``).

    Its cells differ from the source's in the two ways another tissue's would: composition (every
    cell type of ``label_column`` in equal shares, where PBMCs are dominated by a few) and a tissue
    programme (``n_programme`` seeded genes x ``programme_gain`` in every cell). Each simulated cell
    of type t takes, gene by gene, the value of a randomly drawn real cell of type t (a per-type
    bootstrap that keeps each gene's distribution within a type). Labelled as simulated in ``uns``;
    no perturbation column (its cells are atlas cells only).
    """
    import anndata
    import scipy.sparse as sp

    a = anndata.read_h5ad(pbmc_h5ad)
    if label_column not in a.obs:
        raise SaeflowError(f"{pbmc_h5ad}: obs has no column {label_column!r}")
    X = a.X.toarray() if sp.issparse(a.X) else np.asarray(a.X)
    labels = a.obs[label_column].astype(str).to_numpy()
    types = np.unique(labels)
    rng = np.random.default_rng(seed)
    per = np.full(len(types), n_cells // len(types))
    per[: n_cells - per.sum()] += 1
    out, lab = [], []
    for t, k in zip(types, per):
        rows = np.flatnonzero(labels == t)
        pick = rng.choice(rows, size=(k, X.shape[1]))  # a donor cell per (simulated cell, gene)
        out.append(X[pick, np.arange(X.shape[1])[None, :]])
        lab += [t] * int(k)
    Y = np.vstack(out).astype(np.float32)
    programme = np.sort(rng.choice(X.shape[1], n_programme, replace=False))
    Y[:, programme] *= programme_gain
    obs = pd.DataFrame(
        {label_column: lab}, index=pd.Index([f"tissue_{i}" for i in range(len(lab))])
    )
    res = anndata.AnnData(X=sp.csr_matrix(Y), obs=obs, var=a.var.copy())
    genes = np.asarray(a.var_names).astype(str)
    res.uns["saeflow_note"] = (
        f"SIMULATED second tissue from {a.uns.get('saeflow_note', 'pbmc68k_reduced')}: "
        f"cell types in equal shares, per-type gene-wise bootstrap, tissue programme "
        f"x{programme_gain}: {', '.join(genes[programme])}"
    )
    with atomic_path(out_h5ad) as tmp:
        res.write_h5ad(tmp)
    log.info(
        "pbmc68k_tissue: %d simulated cells (%d types), programme of %d genes x%g",
        len(lab),
        len(types),
        n_programme,
        programme_gain,
    )
    return {"cells": len(lab), "types": int(len(types)), "programme": list(genes[programme])}


def build_dictionaries(cells) -> tuple[dict[str, int], dict[str, float]]:
    """Token dictionary (specials, then genes in column order) and non-zero medians of normalised
    expression."""
    import scipy.sparse as sp

    X = cells.X.tocsr() if sp.issparse(cells.X) else sp.csr_matrix(cells.X)
    genes = cells.gene_ids if cells.gene_ids is not None else cells.gene_symbols
    if genes is None:
        raise SaeflowError("cells have neither gene ids nor symbols")
    totals = np.asarray(X.sum(axis=1)).ravel()
    totals[totals == 0] = 1
    norm = sp.diags(10_000 / totals) @ X
    norm = norm.tocsc()
    medians = {}
    for j, g in enumerate(genes):
        col = norm.data[norm.indptr[j] : norm.indptr[j + 1]]
        col = col[col > 0]
        if len(col):
            medians[str(g)] = float(np.median(col))
    token_dict = {s: i for i, s in enumerate(SPECIALS)}
    for g in genes:
        if str(g) in medians and str(g) not in token_dict:
            token_dict[str(g)] = len(token_dict)
    return token_dict, medians


def train_toy_geneformer(cells, out_dir, params: dict, metrics_path=None) -> dict:
    """Train the toy Geneformer on ``cells`` (a CellMatrix) and save it loadable as ``family:
    geneformer``.

    ``params``: seed, hidden_size, num_layers, num_heads, intermediate_size, steps, batch_size, lr,
    mask_prob, max_length (model input size in tokens, <cls> and <eos> included: each cell's
    top-ranked genes, as Geneformer truncates to its input size). Metrics: masked-gene accuracy on
    held-out cells vs the best constant guess.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import BertConfig, BertForMaskedLM

    from saeflow.models.geneformer import GeneformerTokenizer

    p = dict(
        seed=0,
        hidden_size=64,
        num_layers=4,
        num_heads=4,
        intermediate_size=128,
        steps=800,
        batch_size=16,
        lr=1e-3,
        mask_prob=0.15,
        test_fraction=0.2,
        max_length=128,
    )
    p.update(params or {})
    torch.manual_seed(p["seed"])
    rng = np.random.default_rng(p["seed"])
    token_dict, medians = build_dictionaries(cells)
    gene_ids = cells.gene_ids if cells.gene_ids is not None else cells.gene_symbols
    from saeflow.models.base import CellMatrix

    cells = CellMatrix(cells.X, np.asarray(gene_ids).astype(str), cells.gene_symbols, cells.names)
    # Like Geneformer, the input is truncated to the model's size: the top-ranked genes of each
    # cell.
    max_len = int(p["max_length"])
    tok = GeneformerTokenizer(
        token_dict, medians, max_len, special_tokens=True, source="toy geneformer"
    )
    enc = tok.encode(cells)
    ids, attn, special = enc.input_ids, enc.attention_mask, torch.from_numpy(enc.special)
    n = ids.shape[0]
    order = rng.permutation(n)
    n_test = max(1, int(round(p["test_fraction"] * n)))
    test, train = order[:n_test], order[n_test:]
    config = BertConfig(
        vocab_size=len(token_dict),
        hidden_size=p["hidden_size"],
        num_hidden_layers=p["num_layers"],
        num_attention_heads=p["num_heads"],
        intermediate_size=p["intermediate_size"],
        max_position_embeddings=max_len,
        pad_token_id=token_dict["<pad>"],
        hidden_dropout_prob=0.02,
        attention_probs_dropout_prob=0.02,
        type_vocab_size=1,
    )
    model = BertForMaskedLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=0.01)
    warm = max(1, p["steps"] // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warm)
            * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / p["steps"]))))
        ),
    )
    mask_id = token_dict["<mask>"]

    def masked(batch_rows, gen):
        x, a, sp_ = ids[batch_rows].clone(), attn[batch_rows], special[batch_rows]
        m = (torch.rand(x.shape, generator=gen) < p["mask_prob"]) & ~sp_
        labels = torch.where(m, x, torch.full_like(x, -100))
        x[m] = mask_id
        # trim padding columns shared by the whole batch
        width = int(a.sum(1).max())
        return x[:, :width].contiguous(), a[:, :width].contiguous(), labels[:, :width].contiguous()

    gen = torch.Generator().manual_seed(p["seed"])
    model.train()
    losses = []
    for step in tqdm(range(p["steps"]), desc="toy geneformer", mininterval=10):
        rows = train[rng.integers(0, len(train), p["batch_size"])]
        x, a, y = masked(rows, gen)
        loss = model(input_ids=x, attention_mask=a, labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    egen = torch.Generator().manual_seed(p["seed"] + 1)
    correct = total = 0
    counts = np.bincount(
        ids[torch.from_numpy(train)][~special[torch.from_numpy(train)]].numpy(),
        minlength=len(token_dict),
    )
    base_guess = int(np.argmax(counts))
    base_correct = 0
    with torch.inference_mode():
        for i in range(0, n_test, 32):
            x, a, y = masked(test[i : i + 32], egen)
            pred = model(input_ids=x, attention_mask=a).logits.argmax(-1)
            sel = y != -100
            correct += int((pred[sel] == y[sel]).sum())
            base_correct += int((y[sel] == base_guess).sum())
            total += int(sel.sum())
    metrics = {
        "masked_gene_accuracy": correct / max(total, 1),
        "constant_guess_accuracy": base_correct / max(total, 1),
        "n_masked_test_tokens": total,
        "final_train_loss": float(np.mean(losses[-50:])),
        "n_genes": len(token_dict) - len(SPECIALS),
        "n_cells": int(n),
        "params": p,
    }
    log.info("toy geneformer: %s", {k: v for k, v in metrics.items() if k != "params"})
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        model.save_pretrained(tmp)
        with open(tmp / "token_dictionary.pkl", "wb") as fh:
            pickle.dump(token_dict, fh)
        with open(tmp / "gene_median_dictionary.pkl", "wb") as fh:
            pickle.dump(medians, fh)
    if metrics_path:
        write_json(metrics_path, metrics)
    return metrics

"""The resource plan: what a configuration will write and compute, before the first job runs.

For every (model, dataset) of the configured runs: how many sequences or cells, how many tokens,
the bytes of its activation store (tokens x d_model x stored layers x dtype), the peak while the
extraction shards are merged (shards and merged store side by side), the bytes of its SAEs, and
the floating-point work of extraction (the forward pass) and of SAE training, turned into GPU
hours at an assumed effective throughput (``plan.gpu_tflops``: a FLOP-based estimate, stated as
such; not a measurement) and into CPU hours at ``plan.cpu_tflops`` (measured: what extraction and
SAE training reached at the published shapes on 2 cores, benchmarks/rehearsal.py). Extraction's
FLOPs count the blocks up to the highest stored layer, where its passes stop.

Each number says how it was obtained (``basis``):

* ``exact``: the prepared table (``results/datasets/<d>/sequences.parquet``) exists, so the
  items are counted and DNA tokens follow from each sequence's length; for cells the genes with
  a count in each cell (``cells.h5ad``) bound the tokens (genes outside the vocabulary are not
  tokens), capped at the model's input size;
* ``bound``: before preparation, from the configuration's caps (``max_peaks`` x (1 +
  ``background_ratio``), ``n_cells`` + ``perturbed_cells_per_target`` x targets,
  ``max_sequences``) and, for cells, the model's input size as tokens per cell;
* ``unknown``: nothing bounds it (e.g. ``max_peaks: 0`` = every peak); the row is left out of the
  totals and says which knob bounds it.

Model shapes come from the checkpoint's ``config.json`` (``args.json`` for scGPT) when it is on
disk, from the toy settings for toy models, and otherwise from :data:`PUBLISHED` (the released
checkpoints' shapes, keyed by hub repository and subfolder).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saeflow.utils import SaeflowError


@dataclass(frozen=True)
class Shape:
    """What the plan needs of a model: width, depth, feed-forward width (and whether it is gated:
    three matrices instead of two), the input size in tokens, the family, and where the numbers
    come from."""

    d_model: int
    n_layers: int
    d_ffn: int
    max_tokens: int
    family: str
    source: str
    gated: bool = False

    @property
    def flops_per_token(self) -> float:
        """Forward-pass multiply-adds x 2 per token in the blocks, without attention's T-dependent
        part (:func:`extraction_flops` adds it)."""
        ffn = (3 if self.gated else 2) * self.d_model * self.d_ffn
        return 2.0 * self.n_layers * (4 * self.d_model**2 + ffn)


#: The released checkpoints' shapes, for planning before the download: (hub repository or, for
#: checkpoints fetched by URL, a name; subfolder) -> Shape. config.json wins once on disk.
PUBLISHED: dict[tuple[str, str], Shape] = {
    ("zhihan1996/DNABERT-2-117M", ""): Shape(768, 12, 3072, 512, "dnabert2", "published", True),
    ("zhihan1996/DNA_bert_6", ""): Shape(768, 12, 3072, 512, "dnabert", "published"),
    ("InstaDeepAI/nucleotide-transformer-v2-50m-multi-species", ""): Shape(
        512, 12, 2048, 2048, "nucleotide_transformer", "published", True
    ),
    ("InstaDeepAI/nucleotide-transformer-v2-100m-multi-species", ""): Shape(
        512, 22, 2048, 2048, "nucleotide_transformer", "published", True
    ),
    ("InstaDeepAI/nucleotide-transformer-v2-250m-multi-species", ""): Shape(
        768, 24, 3072, 2048, "nucleotide_transformer", "published", True
    ),
    ("InstaDeepAI/nucleotide-transformer-v2-500m-multi-species", ""): Shape(
        1024, 29, 4096, 2048, "nucleotide_transformer", "published", True
    ),
    ("InstaDeepAI/nucleotide-transformer-500m-human-ref", ""): Shape(
        1280, 24, 5120, 1000, "nucleotide_transformer", "published"
    ),
    ("ctheodoris/Geneformer", ""): Shape(1152, 18, 4608, 4096, "geneformer", "published V2-316M"),
    ("ctheodoris/Geneformer", "Geneformer-V2-316M"): Shape(
        1152, 18, 4608, 4096, "geneformer", "published"
    ),
    ("ctheodoris/Geneformer", "Geneformer-V2-104M"): Shape(
        768, 12, 3072, 4096, "geneformer", "published"
    ),
    ("ctheodoris/Geneformer", "Geneformer-V1-10M"): Shape(
        256, 6, 512, 2048, "geneformer", "published"
    ),
    ("scGPT whole-human", ""): Shape(512, 12, 512, 1200, "scgpt", "published"),
}

#: Bases per token of each DNA family's tokenizer (dnabert2: BPE, about 4.5 bases per token on
#: human sequence, an estimate); k-mer families are exact (see :func:`dna_tokens`).
BPE_BASES_PER_TOKEN = 4.5
#: bytes per token of the token index (tokens.parquet, compressed) and offsets; a rough figure
INDEX_BYTES_PER_TOKEN = 12


def dna_tokens(family: str, length: np.ndarray, max_tokens: int) -> np.ndarray:
    """Stored (non-special) tokens of DNA sequences of the given lengths."""
    length = np.asarray(length, dtype=np.int64)
    if family == "dnabert":  # overlapping 6-mers
        n = np.maximum(length - 5, 0)
    elif family == "nucleotide_transformer":  # 6-mers from the left, the tail as single bases
        n = length // 6 + length % 6
    elif family == "dnabert2":
        n = np.ceil(length / BPE_BASES_PER_TOKEN).astype(np.int64)
    else:  # toy and unknown families: one token per base
        n = length
    return np.minimum(n, max_tokens - 2)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def model_shape(name: str, m: dict, root: Path) -> Shape | None:
    """The shape of model ``name`` (its config section ``m``), or None when nothing tells it."""
    if m["source"] == "toy":
        cells = m["family"] == "geneformer"
        t = m["toy_cells" if cells else "toy"]
        return Shape(
            t["hidden_size"],
            t["num_layers"],
            t["intermediate_size"],
            t["max_length"] if cells else t["seq_len"] + 2,
            "geneformer" if cells else "toy",
            "toy settings",
        )
    directory = root / m["path"] if m["source"] == "local" else root / "resources/models" / name
    directory = directory / m["subfolder"] if m["subfolder"] else directory
    cfg = _read_json(directory / "config.json")
    if cfg and "hidden_size" in cfg:
        family = m["family"] if m["family"] != "auto" else _family_of(cfg)
        return Shape(
            int(cfg["hidden_size"]),
            int(cfg.get("num_hidden_layers", m["n_layers"])),
            int(cfg.get("intermediate_size", 4 * cfg["hidden_size"])),
            int(cfg.get("max_position_embeddings", 512)),
            family,
            f"{directory}/config.json",
            gated=family in ("dnabert2", "nucleotide_transformer")
            and cfg.get("add_bias_fnn") is not True,
        )
    args = _read_json(directory / "args.json")
    if args and "embsize" in args:
        return Shape(
            int(args["embsize"]),
            int(args["nlayers"]),
            int(args.get("d_hid", args["embsize"])),
            int(args.get("max_seq_len", 1200)),
            "scgpt",
            f"{directory}/args.json",
        )
    key = (m["hub"]["repo_id"], m["subfolder"]) if m["source"] == "hub" else None
    if m["family"] == "scgpt" or (m["source"] == "url" and m["family"] == "auto"):
        key = ("scGPT whole-human", "")
    return PUBLISHED.get(key) if key else None


def _family_of(cfg: dict) -> str:
    if "alibi_starting_size" in cfg or "bert_layers" in json.dumps(cfg.get("auto_map", {})):
        return "dnabert2"
    if cfg.get("model_type") == "esm":
        return "nucleotide_transformer"
    return "bert"


@dataclass
class Items:
    """Items (sequences or cells) of a dataset and their tokens for one model."""

    n: int | None
    tokens: int | None
    basis: str  # exact, bound, unknown
    note: str = ""


def _cells_nnz(path: Path) -> np.ndarray | None:
    """Genes with a count in each cell of a prepared cells.h5ad (CSR X), or None."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            x = f["X"]
            if not isinstance(x, h5py.Group) or x.attrs.get("encoding-type") != "csr_matrix":
                return None
            return np.diff(x["indptr"][:])
    except (OSError, KeyError, ImportError):
        return None


def dataset_items(name: str, config: dict, shape: Shape, root: Path) -> Items:
    """Items and stored tokens of dataset ``name`` for a model of ``shape``."""
    d = config["datasets"][name]
    cells = d["kind"] == "cells"
    prepared = root / "results/datasets" / name / "sequences.parquet"
    sample = d["tokens_per_item"]  # 0: every token of an item is stored

    def per_item(tokens):  # what the store keeps of items of these token counts
        return np.minimum(tokens, sample) if sample else np.asarray(tokens)

    cap = int(per_item(shape.max_tokens - 2))
    if prepared.is_file():
        import pandas as pd

        table = pd.read_parquet(prepared, columns=None if cells else ["sequence"])
        if not cells:
            lengths = table.sequence.str.len().to_numpy()
            return Items(
                len(table),
                int(per_item(dna_tokens(shape.family, lengths, shape.max_tokens)).sum()),
                "exact",
            )
        nnz = _cells_nnz(prepared.parent / "cells.h5ad")
        if nnz is not None and len(nnz) == len(table):
            return Items(
                len(table), int(np.minimum(nnz, cap).sum()), "exact", "genes with counts, capped"
            )
        return Items(len(table), len(table) * cap, "bound", "input size per cell")
    if cells:
        if d["pool"]:
            parts = [dataset_items(s, config, shape, root) for s in d["pool"]]
            if any(p.n is None for p in parts):
                return Items(
                    None, None, "unknown", f"a source of the pool {d['pool']} is unbounded"
                )
            n = sum(min(p.n, d["cells_per_source"] or p.n) for p in parts)
            return Items(n, n * cap, "bound", "input size per cell")
        if d["builtin"]:
            n = BUILTIN_CELLS.get(d["builtin"])
            n = (
                n
                if n is None
                else n + d["perturbed_cells_per_target"] * BUILTIN_TARGETS.get(d["builtin"], 0)
            )
        elif d["n_cells"]:
            n = d["n_cells"] + d["perturbed_cells_per_target"] * len(d["perturbation_targets"])
        else:
            return Items(
                None, None, "unknown", f"datasets.{name}.n_cells is 0 (every cell): set it"
            )
        return Items(n, n * cap, "bound", "input size per cell")
    if d["kind"] == "peaks":
        if not d["max_peaks"]:
            ref = config["references"][d["reference"]]
            if ref["source"] == "toy":
                sites = sum(m["count"] for m in ref["toy"]["motifs"] if m.get("peaks"))
                n = int(sites * (1 + d["background_ratio"]))  # a peak per planted site
            else:
                return Items(
                    None, None, "unknown", f"datasets.{name}.max_peaks is 0 (every peak): set it"
                )
        else:
            n = int(d["max_peaks"] * (1 + d["background_ratio"]))
        length = d["window"]
    else:  # task
        n = d["max_sequences"] or NT_TASKS.get(d["nt_task"], (None, 0))[0]
        length = NT_TASKS.get(d["nt_task"], (0, 0))[1]
        if d["table"] == "" and not d["nt_task"]:  # the toy genome's promoter task
            ref = config["references"][d["reference"]]
            t = ref["toy"]["task"]
            n = n or 2 * sum(m["count"] for m in ref["toy"]["motifs"] if m.get("promoter"))
            length = t["length"]
        if n is None or not length:
            return Items(None, None, "unknown", f"datasets.{name}: set max_sequences")
    per = int(per_item(dna_tokens(shape.family, np.array([length]), shape.max_tokens))[0])
    return Items(n, n * per, "bound")


#: cells of the builtin datasets (scanpy's pbmc68k_reduced: 700; the simulated tissue: 1000) and
#: the simulated CRISPRi targets (SPI1, IRF8, JUNB, EGR1 and SHAM), each with
#: perturbed_cells_per_target cells
BUILTIN_CELLS = {"pbmc68k_reduced": 700, "pbmc68k_crispri": 700, "pbmc68k_tissue": 1000}
BUILTIN_TARGETS = {"pbmc68k_crispri": 5}
#: Nucleotide Transformer benchmark tasks: (sequences, train + test; bases per sequence). The
#: counts are approximate (the task files' sizes over their record length), for planning before
#: the download; the downloaded table gives the exact count.
NT_TASKS = {
    "promoter_all": (59_196, 300),
    "promoter_tata": (5_920, 300),
    "promoter_no_tata": (53_276, 300),
    "enhancers": (15_368, 200),
    "enhancers_types": (15_368, 200),
    "splice_sites_all": (30_000, 600),
    "splice_sites_acceptors": (21_000, 600),
    "splice_sites_donors": (21_000, 600),
}


def _sae_sizes(recipe: dict, d: int) -> tuple[int, float]:
    """(parameters of one SAE on width d, training FLOPs per training token seen)."""
    d_sae = int(round(recipe["expansion"] * d))
    params = 2 * d * d_sae + d_sae + d
    return params, 12.0 * d * d_sae  # encoder + decoder products, forward and backward


def _expand(recipes: dict, names: list[str]) -> list[dict]:
    """The recipes of a run's SAE names, a sweep counted as its grid."""
    out = []
    for n in names:
        r = recipes[n]
        grid = r.get("sweep") or {}
        n_points = math.prod(len(v) for v in grid.values()) if grid else 1
        biggest = dict(r, **{k: max(v) for k, v in grid.items() if k == "expansion"})
        out += [biggest] * n_points
    return out


def resource_plan(config: dict, root: str | os.PathLike = "."):
    """One row per (model, dataset) of the configured runs (see the module docstring), as a
    DataFrame, and the totals as a dict."""
    import pandas as pd

    root = Path(root)
    pairs: dict[tuple[str, str], list[str]] = {}  # the runs' and the comparisons' stores
    wanted = [(r["model"], r["dataset"], r["saes"]) for r in config["runs"]] + [
        (r["model"], r["dataset"], [r["sae"]])
        for c in config.get("comparisons", [])
        if c.get("active", True)  # planned only when one of its runs is in `runs`
        for r in c["runs"]
    ]
    for model, dataset, saes in wanted:
        have = pairs.setdefault((model, dataset), [])
        have += [s for s in saes if s not in have]
    rows = []
    for (model, dataset), saes in pairs.items():
        m = config["models"][model]
        shape = model_shape(model, m, root)
        layers = list(m["layers"]) or (list(range(1, shape.n_layers + 1)) if shape else [])
        row = dict(model=model, dataset=dataset, layers=len(layers))
        if shape is None:
            rows.append(
                dict(row, basis="unknown", note=f"models.{model}: shape unknown until downloaded")
            )
            continue
        items = dataset_items(dataset, config, shape, root)
        row.update(
            d_model=shape.d_model,
            shape_from=shape.source,
            items=items.n,
            tokens=items.tokens,
            basis=items.basis,
            note=items.note,
        )
        if items.tokens is None:
            rows.append(row)
            continue
        itemsize = np.dtype(m["activation_dtype"]).itemsize  # the schema's default: float16
        store = items.tokens * (shape.d_model * len(layers) * itemsize + INDEX_BYTES_PER_TOKEN)
        shards = config["datasets"][dataset]["shards"]
        sae_bytes, sae_flops = 0, 0.0
        train_tokens = items.tokens * (1 - config["datasets"][dataset]["test_fraction"])
        for r in _expand(config["saes"], saes):
            params, per_token = _sae_sizes(r, shape.d_model)
            seen = (
                r["steps"] * r["batch_size"]
                if r["steps"]
                else r["epochs"] * min(train_tokens, r["max_vectors"] or train_tokens)
            )
            sae_bytes += 4 * params * len(layers)
            sae_flops += per_token * seen * len(layers)
        per_item = items.tokens / max(items.n, 1)
        attention = 4.0 * shape.n_layers * per_item * shape.d_model  # QK^T and AV, per token
        # extraction's passes stop after the highest stored layer (no blocks above, no LM head)
        depth = max(layers) / shape.n_layers if layers else 1.0
        extract_flops = items.tokens * (shape.flops_per_token + attention) * depth
        row.update(
            store_bytes=int(store),
            peak_bytes=int(2 * store if shards > 1 else store),
            sae_bytes=int(sae_bytes),
            extract_tflop=extract_flops / 1e12,
            sae_tflop=sae_flops / 1e12,
        )
        rows.append(row)
    columns = ["model", "dataset", "layers", "basis", "note", "items", "tokens", "d_model"]
    table = pd.DataFrame(rows, columns=list(dict.fromkeys(columns + [k for r in rows for k in r])))
    for col in ("store_bytes", "peak_bytes", "sae_bytes", "extract_tflop", "sae_tflop"):
        if col not in table:
            table[col] = np.nan
    tflops, cpu_tflops = config["plan"]["gpu_tflops"], config["plan"]["cpu_tflops"]
    table["gpu_hours"] = (table.extract_tflop + table.sae_tflop) / tflops / 3600
    table["cpu_hours"] = (table.extract_tflop + table.sae_tflop) / cpu_tflops / 3600
    known = table[table.basis != "unknown"]
    # the stores and SAEs stay; the merge's second copy is transient (shards are temp())
    totals = dict(
        runs=len(table),
        unknown=int((table.basis == "unknown").sum()),
        store_bytes=int(known.store_bytes.sum()),
        sae_bytes=int(known.sae_bytes.sum()),
        disk_bytes=int(known.store_bytes.sum() + known.sae_bytes.sum()),
        peak_bytes=int((known.peak_bytes - known.store_bytes).max() if len(known) else 0)
        + int(known.store_bytes.sum() + known.sae_bytes.sum()),
        gpu_hours=float(known.gpu_hours.sum()),
        gpu_tflops=tflops,
        cpu_hours=float(known.cpu_hours.sum()),
        cpu_tflops=cpu_tflops,
        tokens=int(known.tokens.sum()) if len(known) else 0,
    )
    return table, totals


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n} TB"


def disk_budget(config: dict, root: str | os.PathLike = ".") -> tuple[int, str]:
    """(bytes the run may write, where the figure comes from): ``plan.disk_budget_gb``, or (0)
    the free space of the filesystem that holds ``results/``."""
    gb = config["plan"]["disk_budget_gb"]
    if gb:
        return int(gb * 1e9), "plan.disk_budget_gb"
    where = Path(root).resolve() / "results"
    while not where.exists():
        where = where.parent
    return shutil.disk_usage(where).free, f"free space under {where}"


def summary_line(totals: dict, budget: tuple[int, str]) -> str:
    """The plan in one line (the workflow logs it when it is parsed, ``snakemake -n`` too)."""
    line = (
        f"resource plan: {totals['runs']} model x dataset store(s), {totals['tokens']:,} tokens; "
        f"writes {human_bytes(totals['disk_bytes'])} (activations "
        f"{human_bytes(totals['store_bytes'])}, SAEs {human_bytes(totals['sae_bytes'])}), peak "
        f"{human_bytes(totals['peak_bytes'])}; ~{totals['gpu_hours']:.3g} GPU-hours at "
        f"{totals['gpu_tflops']:g} TFLOP/s (FLOP-based), ~{totals['cpu_hours']:.3g} CPU-hours "
        f"at {totals['cpu_tflops']:g}; budget {human_bytes(budget[0])} "
        f"({budget[1]})"
    )
    if totals["unknown"]:
        line += f"; {totals['unknown']} store(s) unbounded, not counted"
    return line


def check_budget(table, totals: dict, budget: tuple[int, str]) -> None:
    """Raise a :class:`SaeflowError` saying what to turn when the plan's peak exceeds the
    budget."""
    if totals["peak_bytes"] <= budget[0]:
        return
    big = table.sort_values("peak_bytes", ascending=False).iloc[0]
    raise SaeflowError(
        f"resource plan: this run would write up to {human_bytes(totals['peak_bytes'])}, more "
        f"than the disk budget {human_bytes(budget[0])} ({budget[1]}). The largest store is "
        f"{big.model}/{big.dataset}: {big['items']:,} items, {big.tokens:,} tokens x "
        f"{big.layers} layers x {big.d_model} dims ({human_bytes(big.store_bytes)}). Lower "
        f"datasets.{big.dataset}'s size (n_cells, perturbation_targets, max_peaks, "
        f"max_sequences), list fewer models.{big.model}.layers, or raise plan.disk_budget_gb "
        "(snakemake resource_plan writes the whole table)"
    )


def markdown(table) -> str:
    """The plan as a Markdown table in human units (the README's tables; the rule's log)."""

    def num(x, fmt="{:,.0f}"):
        return "?" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)

    def hours(x):
        return num(x, "{:,.0f}" if x is not None and x >= 10 else "{:.2g}")

    def size(x):
        return "?" if x is None or (isinstance(x, float) and math.isnan(x)) else human_bytes(x)

    head = "| model / dataset | items | tokens | layers × d | activations | peak | SAEs | GPU-h |"
    rows = [head + " CPU-h | basis |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in table.to_dict("records"):
        basis = r["basis"] + (f" ({r['note']})" if r.get("note") else "")
        rows.append(
            f"| {r['model']} / {r['dataset']} | {num(r.get('items'))} | {num(r.get('tokens'))} | "
            f"{r['layers']} × {num(r.get('d_model'))} | {size(r.get('store_bytes'))} | "
            f"{size(r.get('peak_bytes'))} | {size(r.get('sae_bytes'))} | "
            f"{hours(r.get('gpu_hours'))} | {hours(r.get('cpu_hours'))} | "
            f"{basis} |"
        )
    return "\n".join(rows)

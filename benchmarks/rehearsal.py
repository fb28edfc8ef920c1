"""A rehearsal at the published shapes: one example config, run end to end on this machine.

For one model family, this writes a random-weight checkpoint in the release layout with the
released dimensions (tests/tinymodels.py's builders at full size), real-shaped inputs (DNA: 512-
or 600-bp peak windows of the toy genome; cells: a synthetic raw-count h5ad shaped like Replogle's
K562 file, 8,563 genes of which ~45% are counted in a cell, with local gene-set libraries and
networks of the published sizes), and the example config with only what cannot be had offline or
in a few minutes of CPU replaced:

* the model: ``source: local`` (the checkpoint above), the example's batch size, one layer
  (``--layers``; the middle block by default);
* the data: a subset (``--items`` sequences or control cells, a few perturbed cells), local files
  instead of downloads;
* the DNA evidence rules' sample sizes (patching pairs, ablation nulls and sequences, head-scan
  sequences) scaled down: every rule still runs, on fewer items.

Then it runs ``snakemake resource_plan`` before anything else (the plan from the config alone),
the whole DAG, the plan again (from the prepared tables), and writes
``<workdir>/rehearsal.md``: per rule wall time, peak RSS, MB written and CPU time (from the
rules' ``benchmark:`` files, via rule_table.py), and the plan's store and SAE bytes next to the
bytes written.

    python benchmarks/rehearsal.py dnabert2 --workdir /tmp/rehearsal_dnabert2 [--items 200]

Families: dnabert2 (DNABERT-2-117M), nt_v2_100m, nt_v2_500m (Nucleotide Transformer v2),
geneformer_v2 (Geneformer V2-316M, 4,096-token cells), scgpt_human (scGPT whole-human).

    python benchmarks/rehearsal.py summary WORKDIR...   # the plan vs the rehearsals, one table
    python benchmarks/rehearsal.py report WORKDIR       # rewrite a finished one's rehearsal.md
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks"), str(REPO / "src")]

from rule_table import markdown as rule_markdown  # noqa: E402
from rule_table import rule_table  # noqa: E402

#: family -> (example config, model key in it, the run's dataset, released shape)
FAMILIES = {
    "dnabert2": dict(
        example="dnabert2_ctcf",
        model="dnabert2",
        dataset="gm12878_ctcf",
        shape=dict(hidden=768, layers=12, heads=12, ffn=3072, vocab=4096),
    ),
    "nt_v2_100m": dict(
        example="nt_v2_ctcf",
        model="nt_v2_50m",
        dataset="gm12878_ctcf",
        shape=dict(
            hidden_size=512, num_hidden_layers=22, num_attention_heads=16, intermediate_size=2048
        ),
    ),
    "nt_v2_500m": dict(
        example="nt_v2_ctcf",
        model="nt_v2_50m",
        dataset="gm12878_ctcf",
        shape=dict(
            hidden_size=1024, num_hidden_layers=29, num_attention_heads=16, intermediate_size=4096
        ),
    ),
    "geneformer_v2": dict(
        example="geneformer_k562",
        model="geneformer_v2",
        dataset="k562_control",
        shape=dict(
            hidden_size=1152,
            num_hidden_layers=18,
            num_attention_heads=18,
            intermediate_size=4608,
            vocab=20275,
            max_pos=4096,
        ),
    ),
    "scgpt_human": dict(
        example="scgpt_k562",
        model="scgpt_human",
        dataset="k562_control",
        shape=dict(embsize=512, nlayers=12, nheads=8, d_hid=512, vocab=60697),
    ),
}
#: Replogle et al. 2022 K562 essential screen, raw single-cell h5ad: genes in var
K562_GENES = 8563
#: fraction of the genes with a count in a K562 cell (~3,800 of 8,563 at ~11k UMIs a cell)
K562_DETECTED = 0.45
#: published sizes of the gene-set libraries (terms) and networks (edges) the examples use
LIBRARIES = {"GO_Biological_Process_2023": 5406, "KEGG_2021_Human": 320, "Reactome_2022": 1818}
TRRUST_EDGES = 8427
STRING_LINKS = 1_000_000  # lines of the links file (~25% pass combined_score >= 700)


# --- checkpoints ---------------------------------------------------------------------------------
def build_checkpoint(family: str, d: Path, symbols: list[str]) -> None:
    import torch
    from tinymodels import (
        SCGPT_ARGS,
        gene,
        make_geneformer_dir,
        make_nt_dir,
        train_dnabert2_tokenizer,
        write_dnabert2_checkpoint,
        write_scgpt_checkpoint,
    )

    s = FAMILIES[family]["shape"]
    d.mkdir(parents=True)
    if family == "dnabert2":
        rng = np.random.default_rng(0)
        corpus = ["".join(rng.choice(list("ACGT"), 1000)) for _ in range(2000)]
        tok = train_dnabert2_tokenizer(vocab_size=s["vocab"], corpus=corpus)
        write_dnabert2_checkpoint(
            d,
            hidden=s["hidden"],
            heads=s["heads"],
            layers=s["layers"],
            ffn=s["ffn"],
            fmt="safetensors",
            tokenizer=tok,
        )
    elif family.startswith("nt_v2"):
        make_nt_dir(d, **s)
    elif family == "geneformer_v2":
        n_genes = s["vocab"] - 4  # <pad> <mask> <cls> <eos>
        sizes = {
            k: s[k]
            for k in (
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
            )
        }
        sizes.update(hidden_dropout_prob=0.02, attention_probs_dropout_prob=0.02)
        make_geneformer_dir(d, "V2", n_genes=n_genes, max_pos=s["max_pos"], sizes=sizes)
        assert gene(0).startswith("ENSG")
    elif family == "scgpt_human":
        from saeflow.models.scgpt import ScgptConfig, build_model

        vocab = {g: i for i, g in enumerate(symbols)}
        n = len(vocab)
        vocab.update({f"FILLER{i}": n + i for i in range(s["vocab"] - 3 - n)})
        vocab.update({t: len(vocab) + i for i, t in enumerate(["<pad>", "<cls>", "<eoc>"])})
        cfg = ScgptConfig(
            vocab_size=len(vocab),
            d_model=s["embsize"],
            n_heads=s["nheads"],
            d_hid=s["d_hid"],
            n_layers=s["nlayers"],
            pad_token_id=vocab["<pad>"],
            cls_token_id=vocab["<cls>"],
            pad_value=-2,
        )
        torch.manual_seed(0)
        state = build_model(cfg).state_dict()  # saeflow's names = flash-attn 1.x's (released)
        sizes = {k: s[k] for k in ("embsize", "nlayers", "nheads", "d_hid")}
        args = dict(SCGPT_ARGS, **sizes)  # the whole-human args.json, its sizes
        write_scgpt_checkpoint(d, state, args=args, vocab=vocab)
    else:
        raise SystemExit(f"unknown family {family!r}; one of {sorted(FAMILIES)}")


# --- cells: a K562-shaped h5ad, gene-set libraries and networks ----------------------------------
def k562_symbols(targets: list[str]) -> list[str]:
    return list(targets) + [f"GENE{i}" for i in range(K562_GENES - len(targets))]


def write_cells(
    path: Path,
    symbols: list[str],
    n_control: int,
    targets: list[str],
    per_target: int,
    seed: int = 0,
) -> None:
    import anndata
    import scipy.sparse as sp
    from tinymodels import gene

    rng = np.random.default_rng(seed)
    labels = ["non-targeting"] * n_control + [t for t in targets for _ in range(per_target)]
    n, g = len(labels), len(symbols)
    mean = rng.lognormal(0.0, 1.2, g)  # gene-specific expression levels
    rows = []
    for i in range(n):
        detected = rng.random(g) < K562_DETECTED * rng.uniform(0.8, 1.2)
        counts = rng.poisson(mean * 2.0) + 1
        rows.append(sp.csr_matrix((counts * detected).astype(np.float32)))
    obs = pd.DataFrame({"gene": labels}, index=[f"cell{i}" for i in range(n)])
    var = pd.DataFrame({"gene_name": symbols}, index=[gene(i) for i in range(g)])
    anndata.AnnData(X=sp.vstack(rows).tocsr(), obs=obs, var=var).write_h5ad(path)


def write_genesets(d: Path, symbols: list[str], seed: int = 0) -> dict:
    """Local stand-ins of the example's libraries and networks, at their published sizes; returns
    the ``genesets`` config entries (file:// URLs)."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    spec = {}
    for name, n_terms in LIBRARIES.items():
        path = d / f"{name}.gmt"
        with open(path, "w") as fh:
            for t in range(n_terms):
                size = int(np.clip(rng.lognormal(3.3, 1.0), 5, 500))
                fh.write(
                    f"TERM{t}\t\t" + "\t".join(rng.choice(symbols, size, replace=False)) + "\n"
                )
        spec[name] = {"source": "gmt", "url": path.as_uri()}
    tfs = rng.choice(symbols, 800, replace=False)
    trrust = d / "trrust_rawdata.human.tsv"
    with open(trrust, "w") as fh:
        for _ in range(TRRUST_EDGES):
            mode = rng.choice(["Activation", "Repression", "Unknown"])
            fh.write(f"{rng.choice(tfs)}\t{rng.choice(symbols)}\t{mode}\t{rng.integers(1e7)}\n")
    spec["trrust_human"] = {"source": "trrust", "trrust_url": trrust.as_uri()}
    ids = [f"9606.ENSP{i:011d}" for i in range(len(symbols))]
    info = d / "9606.protein.info.v12.0.txt.gz"
    with gzip.open(info, "wt") as fh:
        fh.write("#string_protein_id\tpreferred_name\tprotein_size\tannotation\n")
        for i, s in zip(ids, symbols):
            fh.write(f"{i}\t{s}\t100\t-\n")
    links = d / "9606.protein.links.v12.0.txt.gz"
    a = rng.integers(0, len(ids), STRING_LINKS)
    b = rng.integers(0, len(ids), STRING_LINKS)
    score = rng.integers(150, 1000, STRING_LINKS)
    with gzip.open(links, "wt") as fh:
        fh.write("protein1 protein2 combined_score\n")
        fh.writelines(f"{ids[x]} {ids[y]} {z}\n" for x, y, z in zip(a, b, score) if x != y)
    spec["string_human"] = {
        "source": "string",
        "string_links_url": links.as_uri(),
        "string_info_url": info.as_uri(),
    }
    return spec


# --- the config ----------------------------------------------------------------------------------
def rehearsal_config(
    family: str,
    wd: Path,
    items: int,
    layer: int | None,
    n_targets: int,
    per_target: int,
    patching_pairs: int = 8,
) -> tuple[dict, str]:
    f = FAMILIES[family]
    ex = yaml.safe_load((REPO / "config" / "examples" / f"{f['example']}.yaml").read_text())
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    name = family if family.startswith("nt_v2") else f["model"]
    model = dict(ex["models"][f["model"]])
    for k in ("hub", "url", "n_layers"):
        model.pop(k, None)
    path = wd / "resources" / "rehearsal" / name
    n_layers = next(
        v for k, v in f["shape"].items() if k in ("layers", "num_hidden_layers", "nlayers")
    )
    layer = n_layers // 2 if layer is None else layer
    model.update(source="local", path=str(path), layers=[layer])
    ds = dict(ex["datasets"][f["dataset"]])
    cfg: dict = {"models": {name: model}, "threads": ex.get("threads", 2)}
    runs = [dict(r, model=name) for r in ex["runs"] if r["dataset"] == f["dataset"]][:1]
    cfg["runs"], cfg["saes"] = runs, ex["saes"]
    symbols: list[str] = []
    if ds["kind"] == "peaks":
        cfg["references"] = {
            ds["reference"]: {"source": "toy", "toy": default["references"]["toy"]["toy"]}
        }
        ds.update(max_peaks=items)
        cfg["evidence"] = dict(  # every evidence rule, on fewer items than the schema's defaults
            probe_bootstrap=200,
            head_scan_sequences=64,
            patching_pairs=patching_pairs,
            ablation_null=4,
            ablation_sequences=16,
        )
    else:
        targets = ds["perturbation_targets"][:n_targets]
        symbols = k562_symbols(ds["perturbation_targets"])
        h5ad = wd / "resources" / "rehearsal" / "k562.h5ad"
        h5ad.parent.mkdir(parents=True, exist_ok=True)
        write_cells(h5ad, symbols, items, targets, per_target)
        ds.update(
            h5ad=str(h5ad),
            n_cells=items,
            perturbation_targets=targets,
            perturbed_cells_per_target=per_target,
        )
        cfg["genesets"] = write_genesets(wd / "resources" / "rehearsal" / "genesets", symbols)
    cfg["datasets"] = {f["dataset"]: ds}
    build_checkpoint(family, path, symbols)
    return cfg, name


def ds_items(cfg: dict) -> int:
    """The subset's size as the config says it (peaks or control cells)."""
    ds = next(iter(cfg["datasets"].values()))
    return int(ds.get("max_peaks") or ds.get("n_cells"))


def store_bytes(wd: Path, model: str, dataset: str) -> int:
    acts = wd / "results" / model / dataset / "activations"
    return sum(p.stat().st_size for p in acts.rglob("*") if p.is_file())


def sae_bytes(wd: Path, model: str, dataset: str) -> int:
    root = wd / "results" / model / dataset / "sae"
    return sum(p.stat().st_size for p in root.rglob("*.safetensors"))


def smk(wd: Path, *args: str) -> float:
    t = time.time()
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--configfile",
            "config/rehearsal.yaml",
            "--cores",
            "2",
            *args,
        ],
        cwd=wd,
    )
    if p.returncode:
        raise SystemExit(f"snakemake {' '.join(args)} failed in {wd} (see .snakemake/log)")
    return time.time() - t


def summary(workdirs: list[Path]) -> str:
    """One row per finished rehearsal: tokens, store and SAE bytes (plan from the prepared tables
    vs written) and the FLOP-based work of extraction + SAE training against those rules' measured
    wall time (their effective TFLOP/s on this machine: what ``plan.cpu_tflops`` should be)."""
    lines = [
        "| family | items | tokens (plan / stored) | store (plan / written) | SAEs (plan / "
        "written) | extraction + SAE training: TFLOP, wall s, TFLOP/s | all jobs' wall |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for wd in workdirs:
        r = json.loads((wd / "rehearsal.json").read_text())
        p, w = r["plan_after"], r["wrote"]
        model, dataset = p["model"], p["dataset"]
        acts = wd / "results" / model / dataset / "activations" / "manifest.json"
        stored = json.loads(acts.read_text())["n_tokens"]
        rules = rule_table(wd).set_index("rule")
        wall = float(rules.wall_s.reindex(["extract_activations", "train_sae"]).sum())
        tflop = float(p["extract_tflop"]) + float(p["sae_tflop"])
        lines.append(
            f"| {r['family']} | {int(float(p['items'])):,} | {int(float(p['tokens'])):,} / "
            f"{stored:,} ({float(p['tokens']) / stored:.2f}) | "
            f"{float(p['store_bytes']) / 1e6:.1f} / {w['store'] / 1e6:.1f} MB "
            f"({float(p['store_bytes']) / w['store']:.2f}) | "
            f"{float(p['sae_bytes']) / 1e6:.1f} / {w['saes'] / 1e6:.1f} MB "
            f"({float(p['sae_bytes']) / w['saes']:.2f}) | {tflop:.2f}, {wall:.0f} s, "
            f"{tflop / wall:.3f} | {rules.wall_s.sum() / 60:.1f} min |"
        )
    return "\n".join(lines)


def main():
    if sys.argv[1:2] == ["summary"]:  # rehearsal.py summary WORKDIR...
        print(summary([Path(d) for d in sys.argv[2:]]))
        return
    if sys.argv[1:2] == ["report"]:  # rehearsal.py report WORKDIR: rewrite its rehearsal.md
        print(report(Path(sys.argv[2])))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("family", choices=sorted(FAMILIES))
    ap.add_argument(
        "--workdir",
        required=True,
        type=Path,
        help="a new directory (or a stopped rehearsal's, to resume it)",
    )
    ap.add_argument("--items", type=int, default=200, help="sequences / control cells")
    ap.add_argument("--layer", type=int, help="the one layer stored (default: the middle)")
    ap.add_argument("--targets", type=int, default=2, help="cells: perturbation targets kept")
    ap.add_argument("--per-target", type=int, default=4, help="cells: cells per target")
    ap.add_argument("--patching-pairs", type=int, default=8, help="DNA: evidence.patching_pairs")
    ap.add_argument(
        "--networks", nargs="*", help="cells: the networks tested (default: the example's)"
    )
    ap.add_argument(
        "--smk-args", nargs="*", default=[], help="more Snakemake arguments for the run (resume)"
    )
    ap.add_argument("--dry-run", action="store_true", help="build, plan, snakemake -n; stop")
    a = ap.parse_args()
    wd = a.workdir
    cfg_path = wd / "config" / "rehearsal.yaml"
    if cfg_path.exists():  # resume a rehearsal that stopped (finished jobs keep their benchmarks)
        cfg = yaml.safe_load(cfg_path.read_text())
        model, build_s = next(iter(cfg["models"])), float("nan")
    else:
        if wd.exists():
            raise SystemExit(f"{wd} exists and holds no rehearsal: give a new --workdir")
        for part in ("workflow", "scripts", "envs", "profiles", "config"):
            shutil.copytree(REPO / part, wd / part)
        t0 = time.time()
        cfg, model = rehearsal_config(
            a.family, wd, a.items, a.layer, a.targets, a.per_target, a.patching_pairs
        )
        if a.networks is not None and "networks" in cfg["datasets"][FAMILIES[a.family]["dataset"]]:
            cfg["datasets"][FAMILIES[a.family]["dataset"]]["networks"] = a.networks
        build_s = time.time() - t0
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        smk(wd, "resource_plan")
        (wd / "results" / "resource_plan.tsv").rename(wd / "plan_before.tsv")
    if a.dry_run:
        smk(wd, "-n")
        return
    dataset = FAMILIES[a.family]["dataset"]
    before = pd.read_csv(wd / "plan_before.tsv", sep="\t")
    run_s = smk(wd, *a.smk_args)
    smk(wd, "resource_plan", "--forcerun", "resource_plan")
    after = pd.read_csv(wd / "results" / "resource_plan.tsv", sep="\t")
    wrote = dict(store=store_bytes(wd, model, dataset), saes=sae_bytes(wd, model, dataset))
    (wd / "rehearsal.json").write_text(
        json.dumps(
            dict(
                family=a.family,
                run_s=run_s,
                build_s=build_s,
                wrote=wrote,
                items=ds_items(cfg),
                plan_before=before.iloc[0].to_dict(),
                plan_after=after.iloc[0].to_dict(),
            ),
            default=str,
            indent=1,
        )
    )
    print(report(wd))


def report(wd: Path) -> str:
    """``<wd>/rehearsal.md``: the per-rule table and the plan next to the bytes written."""
    r = json.loads((wd / "rehearsal.json").read_text())
    cfg = yaml.safe_load((wd / "config" / "rehearsal.yaml").read_text())
    family, model = r["family"], next(iter(cfg["models"]))
    before, after, wrote, run_s = r["plan_before"], r["plan_after"], r["wrote"], r["run_s"]
    table = rule_table(wd)
    lines = [
        f"### {family}: {model} on {cfg['runs'][0]['dataset']}, SAEs "
        f"{', '.join(cfg['runs'][0]['saes'])} (config/examples/{FAMILIES[family]['example']}.yaml)",
        "",
        f"Shape {', '.join(f'{k} {v:,}' for k, v in FAMILIES[family]['shape'].items())}; "
        f"layer {cfg['models'][model]['layers'][0]}; "
        f"{r['items']} {'peaks (max_peaks)' if 'references' in cfg else 'control cells'}; "
        f"checkpoint and inputs built in {float(r.get('build_s', 'nan')):.0f} s; the DAG ran in "
        f"{run_s:.0f} s ({run_s / 60:.1f} min) on 2 cores.",
        "",
        rule_markdown(table),
        "",
        "| plan vs written | plan (config only) | plan (prepared tables) | written | "
        "ratio (tables / written) |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, col in (("store", "store_bytes"), ("saes", "sae_bytes")):
        b, e = float(before[col]), float(after[col])
        lines.append(
            f"| {key} | {b / 1e6:.1f} MB ({before['basis']}) | {e / 1e6:.1f} MB "
            f"({after['basis']}) | {wrote[key] / 1e6:.1f} MB | {e / max(wrote[key], 1):.2f} |"
        )
    lines.append(f"| tokens | {float(before['tokens']):,.0f} | {float(after['tokens']):,.0f} | | |")
    text = "\n".join(lines) + "\n"
    (wd / "rehearsal.md").write_text(text)
    return text


if __name__ == "__main__":
    main()

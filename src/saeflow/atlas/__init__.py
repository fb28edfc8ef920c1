"""The feature atlas: a static web site of one run (``results/{model}/{dataset}/atlas/``).

:func:`build_atlas` reads what a run wrote (the DNA catalog or the single-cell atlas, the
evaluation, the SAE decoders, and any per-feature evidence tables present) and writes::

    atlas/index.html            the app (hash routes: overview, layer, feature, search, modules,
    flow) atlas/assets/app.js, style.css      copied from this package (``static/``): plain JS, no
    build step atlas/data/index.js         the run: SAE recipes, per-layer summary rows, recovery,
    flow, run-level evidence atlas/data/{sae}/layer{L}/table.js    the layer's feature table
    (columnar) and its modules atlas/data/{sae}/layer{L}/search.js   what search needs: tokens/genes
    -> features, terms, DNA contexts atlas/data/{sae}/layer{L}/f{c}.js     feature pages: details of
    features c*CHUNK .. (c+1)*CHUNK-1

Data files are JavaScript (``SAEFLOW.put(key, {...})``) loaded by ``<script>`` injection, which
Chromium allows from ``file://`` (``fetch`` of a local JSON is not), so the site works from disk and
from any static host. Everything is written deterministically (sorted keys, rounded numbers, no
timestamps, no absolute paths): two runs of the same inputs give the same bytes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from saeflow.columns import TRACK_THRESHOLDS
from saeflow.decoder import WEIGHTS_FILE, decoder_rows
from saeflow.utils import SaeflowError, atomic_path

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
#: features per feature-page shard
CHUNK = 128
#: nearest features listed per neighbouring layer
N_NEAR = 3
#: per feature: rows kept of each list on its page
LIMITS = dict(
    genes=20,
    cells=10,
    celltypes=8,
    enrichment=10,
    networks=5,
    perturbation=20,
    kmers=5,
    evidence=50,
)
#: search index of ontology terms: rows with nominal p below this (q shown beside)
TERM_P = 0.05
FORMAT = 1
#: columns of eval/{sae}/layer{L}.json on the overview
EVAL_COLUMNS = (
    "l0",
    "explained_variance",
    "fvu",
    "dead_fraction",
    "dense_fraction",
    "loss_recovered",
)


# --- small helpers ---------------------------------------------------------------------------


def _num(x, digits: int = 4):
    """A JSON-safe number: 4 significant digits, NaN/inf -> None, ints stay ints."""
    if x is None:
        return None
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(x):
        return None
    if x == 0:
        return 0
    y = float(f"{x:.{digits}g}")
    return int(y) if y.is_integer() and abs(y) < 1e15 else y


def _val(x):
    """A table cell as JSON: numbers rounded, strings as they are, missing -> None."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    if isinstance(x, (str, np.str_)):
        return str(x)
    if isinstance(x, (bool, np.bool_, int, np.integer, float, np.floating)):
        return _num(x)
    try:
        if pd.isna(x):
            return None
    except (TypeError, ValueError):
        pass
    return str(x)


def _rows(df: pd.DataFrame, columns: list[str]) -> list[list]:
    cols = [c for c in columns if c in df.columns]
    return [[_val(v) for v in row] for row in df[cols].itertuples(index=False, name=None)]


def _groups(
    df: pd.DataFrame, keys: list[str], columns: list[str], limit: int | None = None
) -> dict:
    """Rows (as :func:`_rows`) of a frame sorted by ``keys``, grouped by them (an int for one key,
    else a tuple), at most ``limit`` per group; one pass over the frame, not one slice per group."""
    from itertools import groupby

    kv = list(zip(*(df[k].tolist() for k in keys)))
    rows = _rows(df, columns)
    out = {}
    for key, grp in groupby(zip(kv, rows), key=lambda t: t[0]):
        key = (
            int(key[0])
            if len(keys) == 1
            else tuple(int(x) if i == 0 else x for i, x in enumerate(key))
        )
        out[key] = [r for _, r in grp][:limit]
    return out


def _dumps(obj) -> str:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _write_js(root: Path, key: str, obj) -> int:
    """``data/<key>.js``: one call that hands the object to the app; returns the bytes written."""
    text = f"SAEFLOW.put({json.dumps(key)},{_dumps(obj)});\n"
    path = root / "data" / f"{key}.js"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return len(text.encode())


def _need(path: Path) -> Path:
    if not path.exists():
        raise SaeflowError(f"{path}: missing (the atlas needs it; was the run complete?)")
    return path


def _read_parquet(path: Path, required: bool = True) -> pd.DataFrame | None:
    if not path.exists():
        if required:
            _need(path)
        return None
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types
        raise SaeflowError(f"{path}: cannot read ({e})") from None


def _read_tsv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t")
    except Exception as e:
        raise SaeflowError(f"{path}: cannot read as a TSV with a header ({e})") from None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SaeflowError(f"{path}: cannot read ({e})") from None


def _require_columns(df: pd.DataFrame, path: Path, cols) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise SaeflowError(f"{path}: no column(s) {', '.join(missing)}")


def _timing(col: str) -> bool:
    return "seconds" in col or col.endswith("_s") or "time" in col.lower()


def _drop_timing(df: pd.DataFrame) -> pd.DataFrame:
    """Wall times are not results (and differ between runs): timing columns, and the timing rows of
    a metric/value table, are left out of the atlas."""
    df = df.drop(columns=[c for c in df.columns if _timing(str(c))])
    if "metric" in df.columns:
        df = df[~df.metric.astype(str).map(_timing)].reset_index(drop=True)
    return df


# --- decoders: nearest features in the neighbouring layers --------------------------------------


def _top_k(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k largest values (descending; ties by index) and their columns."""
    k = min(k, s.shape[1])
    idx = np.argpartition(-s, k - 1, axis=1)[:, :k]
    val = np.take_along_axis(s, idx, 1)
    order = np.lexsort((idx, -val), axis=1)
    return np.take_along_axis(val, order, 1), np.take_along_axis(idx, order, 1)


def nearest_features(decoders: dict[int, np.ndarray | None], k: int = N_NEAR) -> dict:
    """{layer: {"next": (cos, idx), "prev": (cos, idx)}} between consecutive layers by decoder
    cosine."""
    layers = sorted(decoders)
    out: dict[int, dict] = {L: {} for L in layers}
    for a, b in zip(layers[:-1], layers[1:]):
        wa, wb = decoders[a], decoders[b]
        if wa is None or wb is None or wa.shape[1] != wb.shape[1]:
            continue
        s = wa @ wb.T
        out[a]["next"] = (b, *_top_k(s, k))
        out[b]["prev"] = (a, *_top_k(np.ascontiguousarray(s.T), k))
    return out


def _flow_class(cos: float) -> str:
    lo, hi = TRACK_THRESHOLDS
    return "persistent" if cos >= hi else "moderate" if cos >= lo else "transient"


# --- DNA contexts -------------------------------------------------------------------------------

_UPPER = re.compile(r"[ACGTN]+")


def activating_kmers(contexts) -> list[list]:
    """The most common runs of activating (upper-case) bases over a feature's top contexts."""
    c = Counter(m.group(0) for ctx in contexts for m in _UPPER.finditer(str(ctx)))
    return [[kmer, n] for kmer, n in sorted(c.items(), key=lambda kv: (-kv[1], -len(kv[0]), kv[0]))]


def _parse_top_tokens(s) -> list[list]:
    out = []
    for part in str(s or "").split(","):
        if not part:
            continue
        name, _, n = part.rpartition(":")
        try:
            out.append([name, int(n)])
        except ValueError:
            out.append([part, None])
    return out


# --- per layer ----------------------------------------------------------------------------------


class _Layer:
    """Everything the atlas shows about one layer of one SAE, read from the run's files."""

    def __init__(self, run: Path, kind: str, sae: str, layer: int):
        self.run, self.kind, self.sae, self.layer = run, kind, sae, layer
        self.detail: dict[int, dict] = {}
        self.search: dict = {}
        self.modules: list = []
        self.summary: dict = {}
        ev = run / "eval" / sae / f"layer{layer}.json"
        if ev.exists():
            e = _read_json(ev)
            self.summary.update({k: e[k] for k in EVAL_COLUMNS if k in e})
        if kind == "cells":
            self._cells()
        else:
            self._dna()
        fp = self.dir / "features.parquet"
        if not (self.features.feature.to_numpy() == np.arange(len(self.features))).all():
            raise SaeflowError(
                f"{fp}: features must be numbered 0..{len(self.features) - 1}, one row each"
            )
        hist = self.dir / "histogram.npy"
        self.hist = np.load(hist) if hist.exists() else None
        if self.hist is not None and len(self.hist) != len(self.features):
            raise SaeflowError(f"{hist}: {len(self.hist)} rows for {len(self.features)} features")
        self._evidence()

    def _d(self, f: int) -> dict:
        return self.detail.setdefault(int(f), {})

    # DNA: catalog/{sae}/layer{L}
    def _dna(self):
        self.dir = d = self.run / "catalog" / self.sae / f"layer{self.layer}"
        if not d.is_dir():
            raise SaeflowError(
                f"{d}: missing (the DNA catalog of layer {self.layer}; run feature_catalog)"
            )
        feats = _read_parquet(d / "features.parquet")
        _require_columns(
            feats,
            d / "features.parquet",
            ["feature", "frequency", "mean_activation", "max_activation"],
        )
        self.features = feats.sort_values("feature").reset_index(drop=True)
        self.summary.update(
            {k: v for k, v in _read_json(_need(d / "summary.json")).items() if k != "layer"}
        )
        ctx = _read_tsv(_need(d / "contexts.tsv"))
        _require_columns(ctx, d / "contexts.tsv", ["feature", "activation", "context"])
        ctx = ctx.sort_values(
            ["feature", "rank"] if "rank" in ctx else ["feature", "activation"],
            ascending=[True, "rank" in ctx],
        )
        kmer_label = {}
        search_ctx = {}
        texts = _groups(ctx, ["feature"], ["context"])
        rows = _groups(
            ctx, ["feature"], ["activation", "sequence", "start", "end", "token", "context"]
        )
        for f, g in texts.items():
            contexts = [str(r[0]) for r in g]
            km = activating_kmers(contexts)
            kmer_label[f] = km[0][0] if km else ""
            dd = self._d(f)
            dd["kmers"] = km[: LIMITS["kmers"]]
            dd["contexts"] = rows[f]
            search_ctx[f] = "|".join(contexts)
        tokens_index: dict[str, list] = {}
        for f, s in zip(
            self.features.feature, self.features.get("top_tokens", [""] * len(self.features))
        ):
            toks = _parse_top_tokens(s)
            if toks:
                self._d(f)["tokens"] = toks
            for t, n in toks:
                tokens_index.setdefault(t.upper(), []).append([int(f), n])
        self.features["label"] = [kmer_label.get(int(f), "") for f in self.features.feature]
        self.search = {
            "tokens": tokens_index,
            "contexts": {str(f): s for f, s in sorted(search_ctx.items())},
        }
        self.columns = [
            ("feature", "Feature", "int"),
            ("label", "Top k-mer", "str"),
            ("top_tokens", "Top tokens", "str"),
            ("frequency", "Freq", "num"),
            ("mean_activation", "Mean act", "num"),
            ("max_activation", "Max act", "num"),
            ("svd_max_cos", "SVD cos", "num"),
            ("alive", "Alive", "bool"),
            ("svd_aligned", "SVD-aligned", "bool"),
        ]

    # cells: cells/{sae}/layer{L} (+ perturbation/{sae}/layer{L})
    def _cells(self):
        self.dir = d = self.run / "cells" / self.sae / f"layer{self.layer}"
        if not d.is_dir():
            raise SaeflowError(
                f"{d}: missing (the cell atlas of layer {self.layer}; run cell_features)"
            )
        feats = _read_parquet(d / "features.parquet")
        _require_columns(
            feats,
            d / "features.parquet",
            ["feature", "frequency", "mean_activation", "max_activation"],
        )
        self.features = feats.sort_values("feature").reset_index(drop=True)
        info = _read_json(_need(d / "layer.json"))
        self.summary.update({k: v for k, v in info.get("summary", {}).items() if k != "layer"})
        top = _read_parquet(d / "top_genes.parquet")
        _require_columns(top, d / "top_genes.parquet", ["feature", "gene"])
        top = top.sort_values(["feature", "rank"] if "rank" in top else ["feature"])
        name = "symbol" if "symbol" in top else "gene"
        genes_index: dict[str, list] = {}
        labels = {}
        gcols = [
            "gene",
            "symbol",
            "mean_activation",
            "count",
            "fire_fraction",
        ]  # fixed order; None if absent
        top = top.assign(**{c: None for c in gcols if c not in top.columns})
        for f, g in _groups(top, ["feature"], gcols, LIMITS["genes"]).items():
            self._d(f)["genes"] = g
            labels[f] = ", ".join(str(r[1] if name == "symbol" else r[0]) for r in g[:3])
            for rank, r in enumerate(g):
                keys = {str(r[0]).upper()} | ({str(r[1]).upper()} if name == "symbol" else set())
                for key in sorted(keys):
                    genes_index.setdefault(key, []).append([f, rank])
        self.features["label"] = [labels.get(int(f), "") for f in self.features.feature]
        cells = _read_parquet(d / "top_cells.parquet", required=False)
        if cells is not None and len(cells):
            for f, g in _groups(
                cells.sort_values(["feature", "rank"]),
                ["feature"],
                ["name", "label", "activation"],
                LIMITS["cells"],
            ).items():
                self._d(f)["cells"] = g
        ct = _read_parquet(d / "celltypes.parquet", required=False)
        if ct is not None and len(ct):
            for f, g in _groups(
                ct.sort_values(["feature", "p", "label"]),
                ["feature"],
                ["label", "overlap", "n_top", "n_label", "odds_ratio", "p", "q"],
                LIMITS["celltypes"],
            ).items():
                self._d(f)["celltypes"] = g
        terms: dict[str, list] = {}
        best = {}
        enr = _read_parquet(d / "enrichment.parquet", required=False)
        if enr is not None and len(enr):
            enr = enr.sort_values(["feature", "library", "p", "term"])
            for (f, lib), g in _groups(
                enr,
                ["feature", "library"],
                ["term", "k", "K", "fold", "odds_ratio", "p", "q", "overlap_genes"],
                LIMITS["enrichment"],
            ).items():
                self._d(f).setdefault("enrichment", {})[str(lib)] = g
            for row in (
                enr[enr.p < TERM_P]
                .sort_values(["library", "term", "q", "feature"])
                .itertuples(index=False)
            ):
                terms.setdefault(f"{row.library}: {row.term}", []).append(
                    [int(row.feature), _num(row.q), _num(row.p)]
                )
            first = enr.sort_values(["feature", "q", "p", "library", "term"]).drop_duplicates(
                "feature"
            )
            for f, lib, term, q in zip(first.feature, first.library, first.term, first.q):
                best[int(f)] = (f"{lib}: {term}", float(q))
        nets = _read_parquet(d / "networks.parquet", required=False)
        if nets is not None and len(nets):
            for f, g in _groups(
                nets.sort_values(["feature", "p", "network"]),
                ["feature"],
                ["network", "edges", "null_mean", "fold", "p", "q", "edge_list"],
                LIMITS["networks"],
            ).items():
                self._d(f)["networks"] = g
        self.features["best_term"] = [
            best.get(int(f), ("", None))[0] for f in self.features.feature
        ]
        self.features["best_q"] = [best.get(int(f), ("", np.nan))[1] for f in self.features.feature]
        mods = _read_parquet(d / "modules.parquet", required=False)
        if mods is not None and len(mods):
            self.modules = [
                {
                    "module": int(r["module"]),
                    "size": int(r["size"]),
                    "features": [int(x) for x in str(r["features"]).split(",") if x != ""],
                    "term": _val(r.get("term")),
                    "fraction": _val(r.get("fraction")),
                }
                for _, r in mods.sort_values("module").iterrows()
            ]
        pr = self.run / "perturbation" / self.sae / f"layer{self.layer}" / "response.parquet"
        resp = _read_parquet(pr, required=False)
        if resp is not None and len(resp):
            for f, g in _groups(
                resp.sort_values(["feature", "p", "target"]),
                ["feature"],
                ["target", "n_cells", "diff", "ci_low", "ci_high", "rank_biserial", "p", "q"],
                LIMITS["perturbation"],
            ).items():
                self._d(f)["perturbation"] = g
        self.search = {"genes": genes_index, "terms": terms}
        self.columns = [
            ("feature", "Feature", "int"),
            ("label", "Top genes", "str"),
            ("best_term", "Best term", "str"),
            ("best_q", "q", "num"),
            ("frequency", "Freq", "num"),
            ("cell_frequency", "Cell freq", "num"),
            ("mean_activation", "Mean act", "num"),
            ("max_activation", "Max act", "num"),
            ("svd_max_cos", "SVD cos", "num"),
            ("module", "Module", "int"),
            ("alive", "Alive", "bool"),
            ("annotated", "Annotated", "bool"),
        ]

    # evidence/{sae}/layer{L}/*.tsv: any per-feature table (a `feature` column), shown on the
    # feature page
    def _evidence(self):
        d = self.run / "evidence" / self.sae / f"layer{self.layer}"
        self.evidence_tables = []
        if not d.is_dir():
            return
        for path in sorted(d.glob("*.tsv")):
            # a null distribution (e.g. ablation_null): not about its features
            if path.stem.endswith("_null"):
                continue
            df = _read_tsv(path)
            if "feature" not in df.columns:
                log.warning("%s: no `feature` column; not shown in the atlas", path)
                continue
            add_evidence(self.detail, path.stem, _drop_timing(df))
            self.evidence_tables.append(path.stem)


def add_evidence(detail: dict, name: str, df: pd.DataFrame) -> None:
    """Each feature's rows of a per-feature evidence table, under ``evidence[name]`` of its page."""
    cols = [c for c in df.columns if c not in ("feature", "layer", "sae")]
    feat = pd.to_numeric(df["feature"], errors="coerce")
    df = df[feat.notna()].assign(feature=feat[feat.notna()].astype(int))
    for f, rows in _groups(
        df.sort_values("feature", kind="stable"), ["feature"], cols, LIMITS["evidence"]
    ).items():
        detail.setdefault(f, {}).setdefault("evidence", {})[name] = {"columns": cols, "rows": rows}


# --- the site -----------------------------------------------------------------------------------


def _table_shard(L: _Layer, near: dict) -> dict:
    feats = L.features.copy()
    cols = list(L.columns)
    nxt = near.get("next")
    if nxt is not None:
        _, cos, _idx = nxt
        feats["next_cos"] = cos[:, 0]
        feats["flow"] = [_flow_class(c) for c in cos[:, 0]]
        cols += [("next_cos", "Next cos", "num"), ("flow", "Flow", "str")]
    data = {}
    columns = []
    for key, title, typ in cols:
        if key not in feats.columns:
            continue
        v = feats[key]
        if typ == "num":
            data[key] = [_num(x) for x in v.to_numpy(float)]
        elif typ == "int":
            data[key] = [None if pd.isna(x) else int(x) for x in v]
        elif typ == "bool":
            data[key] = [1 if bool(x) else 0 for x in v]
        else:
            data[key] = [
                "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x) for x in v
            ]
        columns.append({"key": key, "title": title, "type": typ})
    return {
        "n": len(feats),
        "columns": columns,
        "data": data,
        "modules": L.modules,
        "chunk": CHUNK,
        "evidence": L.evidence_tables,
    }


def build_atlas(
    run_dir,
    out_dir,
    *,
    saes: dict[str, list[int]],
    kind: str | None = None,
    title: str | None = None,
    evidence: bool = True,
) -> dict:
    """Write the atlas of one run (``results/{model}/{dataset}``) to ``out_dir`` (atomically).

    ``saes``: recipe -> its layers; ``kind``: "dna" or "cells" (default: from which outputs exist).
    Returns a few sizes (bytes per kind of file) for logging and the benchmark.
    """
    run = Path(run_dir)
    if not saes:
        raise SaeflowError(f"{run}: no SAE recipe given to build the atlas of")
    if kind is None:
        first = next(iter(saes))
        kind = "cells" if (run / "cells" / first).is_dir() else "dna"
    if kind not in ("dna", "cells"):
        raise SaeflowError(f"atlas kind must be 'dna' or 'cells' (got {kind!r})")
    parts = run.resolve().parts
    title = title or (f"{parts[-2]} / {parts[-1]}" if len(parts) >= 2 else str(run))
    sizes = Counter()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        shutil.copytree(
            STATIC, tmp / "assets", ignore=shutil.ignore_patterns("index.html", "__pycache__")
        )
        shutil.copy(STATIC / "index.html", tmp / "index.html")
        index = {
            "format": FORMAT,
            "title": title,
            "kind": kind,
            "chunk": CHUNK,
            "histogram_edges": [_num(e) for e in _hist_edges()],
            "thresholds": list(TRACK_THRESHOLDS),
            "saes": [],
        }
        run_evidence = _run_evidence(run) if evidence else []
        # in the order given (the config's): the first is the one the site opens on
        for sae in saes:
            index["saes"].append(
                _build_sae(
                    run, tmp, kind, sae, sorted(int(x) for x in saes[sae]), sizes, run_evidence
                )
            )
        index["evidence"] = [{k: v for k, v in ev.items() if k != "frame"} for ev in run_evidence]
        sizes["index"] += _write_js(tmp, "index", index)
    log.info("atlas of %s: %s", run, dict(sizes))
    return dict(sizes)


def _hist_edges():
    from saeflow.histogram import EDGES

    return EDGES


def _build_sae(
    run: Path,
    root: Path,
    kind: str,
    sae: str,
    layers: list[int],
    sizes: Counter,
    run_evidence: list[dict],
) -> dict:
    dirs = {L: run / "sae" / sae / f"layer{L}" for L in layers}
    decoders = {  # None where an SAE has no weights
        L: decoder_rows(d, unit_norm=True) if (d / WEIGHTS_FILE).exists() else None
        for L, d in dirs.items()
    }
    near = nearest_features(decoders)
    del decoders
    built = {}
    for L in layers:
        built[L] = _Layer(run, kind, sae, L)
    labels = {
        L: dict(zip(b.features.feature.astype(int), b.features.label.astype(str)))
        for L, b in built.items()
    }
    summary_rows, flows, chains_next = [], [], {}
    for L in layers:
        b = built[L]
        nb = near[L]
        for direction in ("prev", "next"):
            if direction not in nb:
                continue
            other, cos, idx = nb[direction]
            for f in range(len(b.features)):
                b._d(f).setdefault("near", {})[direction] = {
                    "layer": other,
                    "rows": [
                        [int(j), _num(c), labels[other].get(int(j), "")]
                        for j, c in zip(idx[f], cos[f])
                    ],
                }
        if "next" in nb:
            other, cos, idx = nb["next"]
            alive = (
                b.features.alive.to_numpy(bool)
                if "alive" in b.features
                else np.ones(len(cos), bool)
            )
            cls = Counter(_flow_class(c) for c in cos[alive, 0])
            flows.append(
                {
                    "layer": L,
                    "next_layer": other,
                    **{k: cls.get(k, 0) for k in ("persistent", "moderate", "transient")},
                    "mean_cos": _num(cos[alive, 0].mean()) if alive.any() else None,
                }
            )
            chains_next[L] = (other, idx[:, 0], cos[:, 0], alive)
        # shards
        table = _table_shard(b, nb)
        key = f"{sae}/layer{L}"
        sizes["table"] += _write_js(root, f"{key}/table", table)
        sizes["search"] += _write_js(root, f"{key}/search", b.search)
        # run-level tables with layer and feature columns: rows onto feature pages
        for ev in run_evidence:
            df = ev["frame"]
            if {"layer", "feature"} <= set(df.columns):
                sel = pd.to_numeric(df["layer"], errors="coerce") == L
                if "sae" in df.columns:
                    sel &= df["sae"].astype(str) == sae
                if sel.any():
                    add_evidence(b.detail, ev["name"], df[sel])
        n = len(b.features)
        hist = b.hist
        module = b.features["module"].to_numpy() if "module" in b.features else None
        for c in range(0, max(n, 1), CHUNK):
            chunk = {}
            for f in range(c, min(c + CHUNK, n)):
                dd = dict(b.detail.get(f, {}))
                dd["row"] = {
                    col["key"]: (
                        bool(table["data"][col["key"]][f])
                        if col["type"] == "bool"
                        else table["data"][col["key"]][f]
                    )
                    for col in table["columns"]
                }
                if hist is not None:
                    h = hist[f]
                    nz = np.flatnonzero(h)
                    dd["hist"] = (
                        [int(nz[0]), [int(x) for x in h[nz[0] : nz[-1] + 1]]]
                        if len(nz)
                        else [0, []]
                    )
                if module is not None and not pd.isna(module[f]):
                    dd["module"] = int(module[f])
                chunk[str(f)] = dd
            sizes["features"] += _write_js(root, f"{key}/f{c // CHUNK}", chunk)
        row = {"layer": L, "features": n}
        row.update(
            {
                k: _num(v)
                for k, v in b.summary.items()
                if isinstance(v, (int, float, type(None))) and not isinstance(v, bool)
            }
        )
        summary_rows.append(row)
        built[L] = None  # free the layer
    recovery = None
    rec = run / "recovery" / sae / "recovery.tsv"
    if rec.exists():
        df = _drop_timing(_read_tsv(rec))
        recovery = {"columns": list(df.columns), "rows": _rows(df, list(df.columns))}
    from saeflow.columns import CATALOG_SUMMARY_COLUMNS

    first = list(dict.fromkeys(["layer", "features", *EVAL_COLUMNS, *CATALOG_SUMMARY_COLUMNS]))
    seen = [k for row in summary_rows for k in row]
    columns = [c for c in first if c in seen] + sorted({c for c in seen if c not in first})
    return {
        "name": sae,
        "layers": layers,
        "summary": summary_rows,
        "columns": columns,
        "flow": flows,
        "chains": _chains(chains_next, labels),
        "recovery": recovery,
    }


def _chains(chains_next: dict, labels: dict, n: int = 25) -> list[dict]:
    """The longest chains of persistent matches (cosine >=
    the high threshold) through the layers."""
    hi = TRACK_THRESHOLDS[1]
    starts = []
    layers = sorted(chains_next)
    linked = {
        (chains_next[L][0], int(j))
        for L in layers
        for j, c, a in zip(chains_next[L][1], chains_next[L][2], chains_next[L][3])
        if a and c >= hi
    }
    for L in layers:
        _, idx, cos, alive = chains_next[L]
        for f in np.flatnonzero(alive & (cos >= hi)):
            if (L, int(f)) in linked:
                continue  # not the start of its chain
            path, cs, cur_l, cur_f = [[L, int(f), labels[L].get(int(f), "")]], [], L, int(f)
            while cur_l in chains_next:
                nl, nidx, ncos, nalive = chains_next[cur_l]
                if not (nalive[cur_f] and ncos[cur_f] >= hi):
                    break
                cs.append(float(ncos[cur_f]))
                cur_l, cur_f = nl, int(nidx[cur_f])
                path.append([cur_l, cur_f, labels[cur_l].get(cur_f, "")])
            starts.append({"path": path, "min_cos": _num(min(cs)), "length": len(path)})
    starts.sort(
        key=lambda c: (-c["length"], -(c["min_cos"] or 0), c["path"][0][0], c["path"][0][1])
    )
    return starts[:n]


def _run_evidence(run: Path) -> list[dict]:
    """Run-level evidence tables (``evidence/*.tsv``), shown on the overview."""
    d = run / "evidence"
    out = []
    if d.is_dir():
        for path in sorted(d.glob("*.tsv")):
            df = _drop_timing(_read_tsv(path))
            out.append(
                {
                    "name": path.stem,
                    "columns": list(map(str, df.columns)),
                    "rows": _rows(df.head(500), list(df.columns)),
                    "n_rows": len(df),
                    "frame": df,
                }
            )
    return out


def relative_files(out_dir) -> list[str]:
    """Every file of a built atlas, relative to it (sorted)."""
    root = Path(out_dir)
    return sorted(
        str(p.relative_to(root)).replace(os.sep, "/") for p in root.rglob("*") if p.is_file()
    )

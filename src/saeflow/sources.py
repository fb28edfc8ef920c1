"""The public data sources and model snapshots the workflow downloads, and their conversion.

Every function takes its URLs, accessions and revisions as arguments (the workflow reads them
from the config) and writes through :func:`saeflow.download.fetch` or :func:`atomic_path`, so a
failed step leaves nothing under its final name.

- ENCODE files by accession, checked against the ENCODE metadata (md5sum, file_size, format,
  assembly): :func:`encode_file`.
- Nucleotide Transformer downstream tasks (Hugging Face dataset files, FASTA with the label
  after the last ``|`` of each header, or parquet) -> saeflow's task table: :func:`nt_task`.
- Single-cell h5ad files (Replogle et al. 2022): :func:`cells_h5ad`.
- Gene-set libraries: Enrichr text libraries / GMT files -> GMT (read with gseapy),
  TRRUST -> TF->target edges, STRING links + protein info -> symbol edges above a score.
- Model snapshots: a Hugging Face repo at a pinned revision (:func:`hub_snapshot`), or a list
  of files by URL with checksums (:func:`url_files`, e.g. scGPT's Google Drive checkpoint).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

from saeflow.download import fetch, fetch_json, write_record
from saeflow.utils import SaeflowError, atomic_path, sha256

log = logging.getLogger(__name__)

#: The 18 tasks of InstaDeepAI/nucleotide_transformer_downstream_tasks_revised (the benchmark
#: after peer review) and of the original InstaDeepAI/nucleotide_transformer_downstream_tasks.
NT_TASKS_REVISED = (
    "H2AFZ",
    "H3K27ac",
    "H3K27me3",
    "H3K36me3",
    "H3K4me1",
    "H3K4me2",
    "H3K4me3",
    "H3K9ac",
    "H3K9me3",
    "H4K20me1",
    "enhancers",
    "enhancers_types",
    "promoter_all",
    "promoter_no_tata",
    "promoter_tata",
    "splice_sites_acceptors",
    "splice_sites_all",
    "splice_sites_donors",
)
NT_TASKS_ORIGINAL = (
    "H3",
    "H3K14ac",
    "H3K36me3",
    "H3K4me1",
    "H3K4me2",
    "H3K4me3",
    "H3K79me3",
    "H3K9ac",
    "H4",
    "H4ac",
    "enhancers",
    "enhancers_types",
    "promoter_all",
    "promoter_no_tata",
    "promoter_tata",
    "splice_sites_acceptors",
    "splice_sites_all",
    "splice_sites_donors",
)

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


# --------------------------------------------------------------------------------------
# ENCODE
# --------------------------------------------------------------------------------------


def encode_file(
    accession: str,
    dest: str | os.PathLike,
    extension: str,
    url_template: str,
    metadata_url_template: str,
    verify: bool = True,
    file_format: str | None = None,
    assembly: str | None = None,
    **fetch_kw,
) -> dict[str, Any]:
    """Download ENCODE file ``accession`` to ``dest``.

    With ``verify``, the file's metadata (``metadata_url_template``; ENCODE answers
    ``/files/<acc>/?format=json`` with md5sum, file_size, file_format, assembly, status) is read
    first: the download must match its md5 and size, its format must be ``file_format`` and its
    assembly ``assembly`` (when given), and a file that is not ``released`` is logged.
    """
    retries = fetch_kw.get("retries", 3)
    meta: dict[str, Any] = {}
    md5 = size = None
    if verify:
        meta = fetch_json(
            metadata_url_template.format(accession=accession),
            retries=retries,
            timeout=fetch_kw.get("timeout", 60.0),
            backoff=fetch_kw.get("backoff", 2.0),
        )
        if file_format and meta.get("file_format") and meta["file_format"] != file_format:
            raise SaeflowError(
                f"ENCODE {accession} is a {meta['file_format']!r} file, not {file_format!r}: "
                "check the accession in the config"
            )
        if assembly and meta.get("assembly") and meta["assembly"] != assembly:
            raise SaeflowError(
                f"ENCODE {accession} is on assembly {meta['assembly']!r}, but the reference is "
                f"{assembly!r}: check the accession (or references.<name>.assembly)"
            )
        if meta.get("status") and meta["status"] != "released":
            log.warning("ENCODE %s has status %r (not 'released')", accession, meta["status"])
        md5, size = meta.get("md5sum"), meta.get("file_size")
    url = url_template.format(accession=accession, extension=extension)
    rec = fetch(url, dest, md5=md5, size=size, record=False, **fetch_kw)
    keep = (
        "accession",
        "assembly",
        "file_format",
        "file_type",
        "output_type",
        "status",
        "dataset",
        "biosample_ontology",
        "target",
        "md5sum",
        "file_size",
        "href",
    )
    rec["encode"] = {
        k: meta[k] for k in keep if k in meta and isinstance(meta[k], (str, int, float))
    }
    write_record(dest, rec)
    return rec


# --------------------------------------------------------------------------------------
# Nucleotide Transformer downstream tasks
# --------------------------------------------------------------------------------------


def parse_nt_fasta(path: str | os.PathLike):
    """name, sequence, label of an NT benchmark FASTA (label =
    integer after the header's last '|')."""
    import pandas as pd

    names, seqs, labels = [], [], []
    name, chunks = None, []

    def flush():
        if name is None:
            return
        if "|" not in name:
            raise SaeflowError(
                f"{path}: header {name!r} has no '|<label>' suffix (not the NT benchmark layout)"
            )
        try:
            label = int(name.rsplit("|", 1)[1])
        except ValueError:
            raise SaeflowError(
                f"{path}: header {name!r}: label {name.rsplit('|', 1)[1]!r} is not an integer"
            ) from None
        seq = "".join(chunks)
        if not seq:
            raise SaeflowError(f"{path}: record {name!r} has no sequence")
        names.append(name)
        seqs.append(seq.upper())
        labels.append(label)

    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line.startswith(">"):
                flush()
                name, chunks = line[1:], []
            elif line:
                if name is None:
                    raise SaeflowError(f"{path}: sequence before the first '>' header")
                chunks.append(line)
    flush()
    if not names:
        raise SaeflowError(f"{path}: no FASTA record found")
    return pd.DataFrame({"name": names, "sequence": seqs, "label": labels})


def read_nt_split(path: str | os.PathLike):
    """One split of a task: a ``.fna``/``.fasta`` file or a ``.parquet``/``.csv`` with sequence and
    label."""
    import pandas as pd

    path = Path(path)
    if path.suffix in (".parquet", ".csv", ".tsv"):
        df = (
            pd.read_parquet(path)
            if path.suffix == ".parquet"
            else pd.read_csv(path, sep="," if path.suffix == ".csv" else "\t")
        )
        missing = {"sequence", "label"} - set(df.columns)
        if missing:
            raise SaeflowError(f"{path}: lacks column(s) {sorted(missing)}")
        if "name" not in df:
            df["name"] = [f"{path.stem}_{i}" for i in range(len(df))]
        df = df[["name", "sequence", "label"]].copy()
        df["sequence"] = df.sequence.str.upper()
        return df
    return parse_nt_fasta(path)


def nt_task_table(split_files: dict[str, str | os.PathLike], out: str | os.PathLike):
    """saeflow's task table (name, sequence, label, split) from the benchmark's split files."""
    import pandas as pd

    from saeflow.utils import write_table

    parts = []
    for split, path in split_files.items():
        df = read_nt_split(path)
        df["split"] = split
        parts.append(df)
    table = pd.concat(parts, ignore_index=True)
    table["label"] = table.label.astype(int)
    write_table(table, out)
    log.info(
        "task table %s: %d sequences (%s)",
        out,
        len(table),
        ", ".join(f"{s}: {n}" for s, n in table.split.value_counts().items()),
    )
    return table


def nt_task(
    task: str,
    out_table: str | os.PathLike,
    raw_dir: str | os.PathLike,
    repo_id: str,
    revision: str,
    endpoint: str,
    file_template: str,
    splits: Iterable[str],
    **fetch_kw,
):
    """Download ``task``'s split files from the Hugging Face dataset ``repo_id`` at ``revision``
    into ``raw_dir`` and convert them to the task table ``out_table``."""
    files = {}
    with atomic_path(raw_dir) as tmp:
        tmp.mkdir()
        for split in splits:
            rel = file_template.format(task=task, split=split)
            url = f"{endpoint.rstrip('/')}/datasets/{repo_id}/resolve/{revision}/{rel}"
            try:
                fetch(url, tmp / Path(rel).name, **fetch_kw)
            except SaeflowError as e:
                if "HTTP 404" in str(e) and task not in NT_TASKS_REVISED + NT_TASKS_ORIGINAL:
                    raise SaeflowError(
                        f"{e}; {task!r} is not a task of the NT benchmark "
                        f"(revised: {', '.join(NT_TASKS_REVISED)})"
                    ) from None
                raise
            files[split] = Path(raw_dir) / Path(rel).name
        table = nt_task_table({s: tmp / Path(p).name for s, p in files.items()}, out_table)
    return table


# --------------------------------------------------------------------------------------
# single cells
# --------------------------------------------------------------------------------------


def check_hdf5(path: str | os.PathLike) -> None:
    """Refuse a file that is not HDF5 (an .h5ad is one); the signature sits at 0 or a power of two
    >= 512."""
    with open(path, "rb") as fh:
        for offset in (0, 512, 1024, 2048, 4096):
            fh.seek(offset)
            if fh.read(8) == HDF5_SIGNATURE:
                return
    raise SaeflowError(f"{path}: not an HDF5 file (an .h5ad is HDF5): wrong URL, or an error page?")


def _hdf5_or_zip(path) -> None:
    import zipfile

    if not zipfile.is_zipfile(path):
        check_hdf5(path)


def cells_h5ad(
    url: str, dest: str | os.PathLike, sha256: str | None = None, member: str = "", **fetch_kw
) -> dict[str, Any]:
    """Download a single-cell ``.h5ad`` (checked to be HDF5 before it is moved into place).

    A zip archive (Tabula Sapiens ships ``TS_<tissue>.h5ad.zip`` on figshare) is unpacked: its only
    ``.h5ad`` member, or ``member``; ``sha256`` is of what the URL serves (the archive). The archive
    is removed once its member is in place; the record ``<dest>.sha256.json`` names both.
    """
    import zipfile

    dest = Path(dest)
    archive = dest.with_name(dest.name + ".download")
    rec = fetch(url, archive, sha256=sha256, validate=_hdf5_or_zip, record=False, **fetch_kw)
    try:
        if not zipfile.is_zipfile(archive):
            os.replace(archive, dest)
        else:
            with zipfile.ZipFile(archive) as zf:
                names = [n for n in zf.namelist() if not n.endswith("/")]
                cands = [
                    n for n in names if (Path(n).name == member if member else n.endswith(".h5ad"))
                ]
                if len(cands) != 1:
                    what = f"members named {member!r}" if member else ".h5ad members"
                    raise SaeflowError(
                        f"{url}: the zip archive holds {len(cands)} {what} (it holds: "
                        f"{', '.join(names[:10]) or 'nothing'})"
                        + ("" if member else "; name one with the dataset's `member`")
                    )
                with atomic_path(dest) as tmp, zf.open(cands[0]) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                    out.flush()
                    check_hdf5(tmp)
                rec = dict(rec, member=cands[0])
    finally:
        archive.unlink(missing_ok=True)
    rec = dict(rec, path=os.fspath(dest))
    write_record(dest, rec)
    return rec


# --------------------------------------------------------------------------------------
# gene sets
# --------------------------------------------------------------------------------------


def geneset_files(
    source: str, spec: dict[str, Any], library: str
) -> list[tuple[str, str, str | None]]:
    """(file name, url, sha256) of the raw files of one ``genesets`` entry."""
    if source == "enrichr":
        return [
            (
                f"{library}.gmt",
                spec["enrichr_url"].format(library=library),
                spec.get("sha256") or None,
            )
        ]
    if source == "gmt":
        return [(f"{library}.gmt", spec["url"], spec.get("sha256") or None)]
    if source == "trrust":
        return [("trrust.tsv", spec["trrust_url"], spec.get("sha256") or None)]
    if source == "string":
        return [
            ("links.txt.gz", spec["string_links_url"], spec.get("sha256") or None),
            ("info.txt.gz", spec["string_info_url"], spec.get("info_sha256") or None),
        ]
    raise SaeflowError(f"unknown gene-set source {source!r}")


def download_geneset(
    source: str, spec: dict[str, Any], library: str, out_dir: str | os.PathLike, **fetch_kw
) -> None:
    """Fetch the raw files of one gene-set source into ``out_dir`` (all or nothing)."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name, url, digest in geneset_files(source, spec, library):
            fetch(url, tmp / name, sha256=digest, **fetch_kw)


def clean_gene_sets(sets: dict[str, list[str]]) -> dict[str, list[str]]:
    """Enrichr writes some genes as ``SYMBOL,weight``: keep the symbol; drop empties and repeats."""
    out = {}
    for term, genes in sets.items():
        seen = list(dict.fromkeys(g.split(",")[0].strip() for g in genes))
        seen = [g for g in seen if g]
        if seen:
            out[term] = seen
    return out


def write_gmt(raw: str | os.PathLike, out: str | os.PathLike, name: str) -> dict[str, list[str]]:
    """Read a GMT (an Enrichr text library is one) with gseapy and write it back clean."""
    import gseapy

    raw = Path(raw)
    if not raw.name.lower().endswith(".gmt"):
        raise SaeflowError(f"{raw}: expected a .gmt file")
    sets = clean_gene_sets(gseapy.read_gmt(str(raw)))
    if not sets:
        raise SaeflowError(f"{raw}: no gene set could be read (not a GMT / Enrichr text library?)")
    with atomic_path(out) as tmp:
        gseapy.parser.write_gmt(sets, str(tmp), name)
    log.info(
        "%s: %d gene sets, %d genes", out, len(sets), len({g for v in sets.values() for g in v})
    )
    return sets


def trrust_edges(raw: str | os.PathLike, out: str | os.PathLike):
    """TRRUST raw data (TF, target, mode, PMIDs; no header) -> edge table source, target, mode,
    pmids."""
    import pandas as pd

    from saeflow.utils import write_table

    df = pd.read_csv(raw, sep="\t", header=None, dtype=str, comment=None)
    if df.shape[1] != 4:
        raise SaeflowError(
            f"{raw}: expected 4 tab-separated columns (TF, target, mode, PMIDs), got {df.shape[1]}"
        )
    df.columns = ["source", "target", "mode", "pmids"]
    df = df.dropna(subset=["source", "target"]).drop_duplicates(["source", "target", "mode"])
    if df.empty:
        raise SaeflowError(f"{raw}: no TF-target edge")
    df = df.sort_values(["source", "target", "mode"]).reset_index(drop=True)
    write_table(df, out)
    log.info("%s: %d edges, %d TFs", out, len(df), df.source.nunique())
    return df


def string_edges(
    links: str | os.PathLike,
    info: str | os.PathLike,
    out: str | os.PathLike,
    min_score: int = 700,
    chunksize: int = 2_000_000,
):
    """STRING links (protein1 protein2 combined_score, ENSP ids) with combined_score >=
    ``min_score``, named by the protein info's ``preferred_name``; undirected, one row per pair
    (source < target)."""
    import pandas as pd

    from saeflow.utils import write_table

    names = pd.read_csv(info, sep="\t", dtype=str)
    names.columns = [c.lstrip("#") for c in names.columns]
    if not {"string_protein_id", "preferred_name"} <= set(names.columns):
        raise SaeflowError(
            f"{info}: expected columns string_protein_id and preferred_name, got "
            f"{list(names.columns)}"
        )
    symbol = dict(zip(names.string_protein_id, names.preferred_name))
    kept = []
    for chunk in pd.read_csv(
        links, sep=" ", chunksize=chunksize, dtype={"combined_score": "int32"}
    ):
        if not {"protein1", "protein2", "combined_score"} <= set(chunk.columns):
            raise SaeflowError(
                f"{links}: expected columns protein1 protein2 combined_score, got "
                f"{list(chunk.columns)}"
            )
        chunk = chunk[chunk.combined_score >= min_score]
        kept.append(
            pd.DataFrame(
                {
                    "a": chunk.protein1.map(symbol),
                    "b": chunk.protein2.map(symbol),
                    "combined_score": chunk.combined_score,
                }
            )
        )
    df = (
        pd.concat(kept, ignore_index=True)
        if kept
        else pd.DataFrame(columns=["a", "b", "combined_score"])
    )
    unmapped = int(df.a.isna().sum() + df.b.isna().sum())
    df = df.dropna(subset=["a", "b"])
    df = df[df.a != df.b]
    lo, hi = df[["a", "b"]].min(axis=1), df[["a", "b"]].max(axis=1)
    df = pd.DataFrame({"source": lo, "target": hi, "combined_score": df.combined_score.astype(int)})
    df = (
        df.sort_values("combined_score", ascending=False)
        .drop_duplicates(["source", "target"])
        .sort_values(["source", "target"])
        .reset_index(drop=True)
    )
    if df.empty:
        raise SaeflowError(f"{links}: no edge with combined_score >= {min_score}")
    write_table(df, out)
    log.info(
        "%s: %d edges >= %d (%d endpoints without a symbol dropped)",
        out,
        len(df),
        min_score,
        unmapped,
    )
    return df


def build_geneset(spec: dict[str, Any], name: str, raw_dir: str | os.PathLike, out) -> None:
    """The ``genesets`` entry ``name`` from the raw files :func:`download_geneset` fetched into
    ``raw_dir``: a clean GMT (enrichr, gmt: the set collection ``name``), the TRRUST TF-target
    edges (trrust) or the STRING edges with combined_score >= ``spec["min_score"]`` (string)."""
    raw = Path(raw_dir)
    if spec["source"] in ("enrichr", "gmt"):
        write_gmt(raw / f"{spec['library'] or name}.gmt", out, name)
    elif spec["source"] == "trrust":
        trrust_edges(raw / "trrust.tsv", out)
    else:
        string_edges(raw / "links.txt.gz", raw / "info.txt.gz", out, min_score=spec["min_score"])


# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------

#: Where checkpoints state their depth.
_DEPTH_KEYS = (
    ("config.json", ("num_hidden_layers", "n_layers", "num_layers")),
    ("args.json", ("nlayers",)),
)


def _checkpoint_depth(model_dir: Path) -> tuple[str, int] | None:
    for fname, keys in _DEPTH_KEYS:
        p = model_dir / fname
        if p.is_file():
            try:
                cfg = json.loads(p.read_text())
            except ValueError:
                continue
            for k in keys:
                if isinstance(cfg.get(k), int):
                    return f"{fname}:{k}", cfg[k]
    return None


def check_depth(model_dir: str | os.PathLike, n_layers: int | None, what: str) -> None:
    """The planned layer count (config ``n_layers``) must match what the checkpoint says."""
    if not n_layers:
        return
    found = _checkpoint_depth(Path(model_dir))
    if found and found[1] != n_layers:
        raise SaeflowError(
            f"{what}: the config says n_layers={n_layers}, but {found[0]} says {found[1]}; "
            "fix models.<name>.n_layers (the DAG is planned from it)"
        )


def _files_record(root: Path) -> dict[str, dict[str, Any]]:
    return {
        str(p.relative_to(root)): {"size": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def hub_snapshot(
    repo_id: str,
    revision: str,
    dest: str | os.PathLike,
    allow_patterns: list[str] | None = None,
    endpoint: str | None = None,
    n_layers: int | None = None,
    family: str | None = None,
    retries: int = 3,
    backoff: float = 2.0,
    token: str | bool | None = None,
    subfolder: str = "",
) -> dict[str, Any]:
    """Snapshot of Hugging Face model repo ``repo_id`` at ``revision`` into ``dest`` (all or
    nothing).

    The revision is resolved to its commit first and every file is fetched at that commit;
    ``dest/saeflow_download.json`` records repo, revision, commit and each file's sha256.
    """
    import httpx2
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = endpoint.rstrip("/") if endpoint else None
    where = f"{repo_id}@{revision}" + (f" on {endpoint}" if endpoint else "")
    attempts = retries + 1
    for attempt in range(1, attempts + 1):
        try:
            commit = (
                HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision).sha
            )
            with atomic_path(dest) as tmp:
                snapshot_download(
                    repo_id,
                    revision=commit,
                    local_dir=tmp,
                    allow_patterns=allow_patterns or None,
                    endpoint=endpoint,
                    token=token,
                    cache_dir=tmp.parent / "hf-cache",
                    max_workers=4,
                )
                shutil.rmtree(tmp / ".cache", ignore_errors=True)
                if not any(p.is_file() for p in tmp.rglob("*")):
                    raise SaeflowError(f"{where}: no file matched allow_patterns {allow_patterns}")
                if subfolder and not (tmp / subfolder).is_dir():
                    raise SaeflowError(
                        f"{where}: no folder {subfolder!r} among the files fetched "
                        f"(allow_patterns {allow_patterns})"
                    )
                check_depth(tmp / subfolder, n_layers, where)
                rec = {
                    "source": "hub",
                    "repo_id": repo_id,
                    "revision": revision,
                    "commit": commit,
                    "endpoint": endpoint,
                    "family": family,
                    "allow_patterns": allow_patterns,
                    "files": _files_record(tmp),
                }
                (tmp / "saeflow_download.json").write_text(json.dumps(rec, indent=2) + "\n")
            log.info(
                "snapshot of %s (commit %s): %d files -> %s", where, commit, len(rec["files"]), dest
            )
            return rec
        except RevisionNotFoundError:
            raise SaeflowError(
                f"{where}: revision {revision!r} not found in the repository"
            ) from None
        except (RepositoryNotFoundError, GatedRepoError) as e:
            raise SaeflowError(
                f"{where}: repository not found or not accessible (gated or private repos need "
                f"HF_TOKEN): {type(e).__name__}"
            ) from None
        except (httpx2.TransportError, HfHubHTTPError, OSError) as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            if (
                isinstance(e, HfHubHTTPError)
                and status is not None
                and status < 500
                and status != 429
            ):
                raise SaeflowError(f"{where}: HTTP {status}: {e}") from None
            if attempt == attempts:
                raise SaeflowError(
                    f"{where}: snapshot failed after {attempts} attempts: {e}"
                ) from None
            wait = backoff * 2 ** (attempt - 1)
            log.warning(
                "%s: attempt %d/%d failed (%s); retrying in %.1f s",
                where,
                attempt,
                attempts,
                e,
                wait,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")


def url_files(
    files: list[dict[str, Any]],
    dest: str | os.PathLike,
    n_layers: int | None = None,
    family: str | None = None,
    **fetch_kw,
) -> dict[str, Any]:
    """Fetch a checkpoint given as files by URL (``name``, ``url``, optional ``sha256``/``md5``)
    into ``dest`` (all or nothing); ``dest/saeflow_download.json`` records each file."""
    if not files:
        raise SaeflowError(f"{dest}: no file to download (models.<name>.files is empty)")
    recs = {}
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        for f in files:
            name = f.get("name") or Path(f["url"].split("?")[0]).name
            if not name or "/" in name or name.startswith("."):
                raise SaeflowError(f"{f['url']}: give this file a plain `name` (got {name!r})")
            recs[name] = fetch(
                f["url"],
                tmp / name,
                sha256=f.get("sha256") or None,
                md5=f.get("md5") or None,
                record=False,
                **fetch_kw,
            )
        check_depth(tmp, n_layers, str(dest))
        rec = {"source": "url", "family": family, "files": recs}
        (tmp / "saeflow_download.json").write_text(json.dumps(rec, indent=2) + "\n")
    return rec

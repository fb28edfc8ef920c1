"""Reference genomes and intervals: FASTA checks, bgzip + faidx, peaks -> windows -> sequences."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from saeflow.utils import SaeflowError, write_table

log = logging.getLogger(__name__)

_VALID = set(b"ACGTNRYKMSWBDHVacgtnrykmswbdhv")


def _open_text(path: Path):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def validate_fasta(path: str | os.PathLike) -> dict[str, int]:
    """Stream a FASTA (plain, gzip or bgzip) and check it is whole and well formed.

    Raises :class:`SaeflowError` naming the file and the problem for: a missing
    or empty file, a truncated gzip stream, text before the first header, a
    record with no sequence, characters that are not IUPAC nucleotides, a
    duplicated name, or a final line without its newline (the mark of a file cut
    off mid-write). Returns {name: length}.
    """
    path = Path(path)
    if not path.exists():
        raise SaeflowError(f"{path}: FASTA file does not exist")
    if path.stat().st_size == 0:
        raise SaeflowError(f"{path}: FASTA file is empty")
    lengths: dict[str, int] = {}
    name = None
    last = b""
    lineno = 0
    try:
        with _open_text(path) as fh:
            for lineno, line in enumerate(fh, 1):
                last = line
                body = line.rstrip(b"\r\n")
                if body.startswith(b">"):
                    if name is not None and lengths[name] == 0:
                        raise SaeflowError(
                            f"{path}: record {name!r} has no sequence (line {lineno})"
                        )
                    name = body[1:].split()[0].decode() if body[1:].strip() else ""
                    if not name:
                        raise SaeflowError(f"{path}: empty record name at line {lineno}")
                    if name in lengths:
                        raise SaeflowError(
                            f"{path}: duplicated record name {name!r} at line {lineno}"
                        )
                    lengths[name] = 0
                    continue
                if name is None:
                    if body.strip():
                        raise SaeflowError(
                            f"{path}: line {lineno} comes before the first '>' header"
                        )
                    continue
                bad = set(body) - _VALID
                if bad:
                    raise SaeflowError(
                        f"{path}: line {lineno} of record {name!r} has non-nucleotide characters "
                        f"{sorted(chr(b) for b in bad)[:5]}"
                    )
                lengths[name] += len(body)
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        raise SaeflowError(f"{path}: compressed FASTA is truncated or corrupt ({e})") from e
    if name is None:
        raise SaeflowError(f"{path}: no '>' header found: not a FASTA file")
    if lengths[name] == 0:
        raise SaeflowError(f"{path}: last record {name!r} has no sequence (file truncated?)")
    if not last.endswith(b"\n"):
        raise SaeflowError(
            f"{path}: the last line (line {lineno}) has no newline: the file looks truncated "
            "mid-write"
        )
    return lengths


def bgzip_and_index(src: str | os.PathLike, dest: str | os.PathLike) -> dict[str, int]:
    """Validate ``src`` then write ``dest`` (.fa.gz, bgzip) with its .fai and .gzi.

    All three files appear together or not at all.
    """
    import pysam

    lengths = validate_fasta(src)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmpdir, ignore_errors=True)
    tmpdir.mkdir()
    try:
        tmp = tmpdir / dest.name
        with _open_text(Path(src)) as fin, pysam.BGZFile(str(tmp), "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        pysam.faidx(str(tmp))
        fa = pysam.FastaFile(str(tmp))
        got = dict(zip(fa.references, fa.lengths))
        fa.close()
        if got != lengths:
            raise SaeflowError(f"{src}: faidx disagrees with the parsed lengths")
        for suffix in (".fai", ".gzi"):
            os.replace(str(tmp) + suffix, str(dest) + suffix)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    log.info("indexed %s: %d records, %d bp", dest, len(lengths), sum(lengths.values()))
    return lengths


NARROWPEAK = [
    "chrom",
    "start",
    "end",
    "name",
    "score",
    "strand",
    "signalValue",
    "pValue",
    "qValue",
    "peak",
]


def read_peaks(path: str | os.PathLike) -> pd.DataFrame:
    """Read a BED3+ / narrowPeak file (plain or .gz). Summit
    = ``peak`` column, else the midpoint."""
    path = Path(path)
    try:
        df = pd.read_csv(path, sep="\t", header=None, comment="#")
    except pd.errors.EmptyDataError:
        raise SaeflowError(f"{path}: peak file is empty")
    if df.shape[1] < 3:
        raise SaeflowError(
            f"{path}: a BED file needs at least 3 tab-separated columns, found {df.shape[1]}"
        )
    df = df.iloc[:, : len(NARROWPEAK)]
    df.columns = NARROWPEAK[: df.shape[1]]
    if not (pd.api.types.is_integer_dtype(df.start) and pd.api.types.is_integer_dtype(df.end)):
        raise SaeflowError(f"{path}: columns 2 and 3 (start, end) must be integers")
    if (df.end <= df.start).any():
        raise SaeflowError(f"{path}: {(df.end <= df.start).sum()} intervals have end <= start")
    if "peak" in df and (df.peak >= 0).all():
        df["summit"] = df.start + df.peak
    else:
        df["summit"] = (df.start + df.end) // 2
    return df


def peak_windows(
    peaks: pd.DataFrame,
    chrom_lengths: dict[str, int],
    window: int,
    background_ratio: float,
    max_peaks: int,
    seed: int,
) -> pd.DataFrame:
    """Fixed windows centred on peak summits (label 1) plus background windows (label 0).

    Background windows are drawn uniformly from the genome and kept only when
    they overlap no peak, so window-level AUROCs have true negatives.
    Columns: name, chrom, start, end, label.
    """
    rng = np.random.default_rng(seed)
    pk = peaks[peaks.chrom.isin(chrom_lengths.keys())]
    if len(pk) == 0:
        raise SaeflowError(
            "no peak lies on a chromosome of the reference FASTA (check chromosome names)"
        )
    if max_peaks and len(pk) > max_peaks:
        pk = pk.iloc[np.sort(rng.choice(len(pk), max_peaks, replace=False))]
    half = window // 2
    starts = (pk.summit - half).clip(lower=0)
    ends = starts + window
    ok = ends <= pk.chrom.map(chrom_lengths)
    pos = pd.DataFrame({"chrom": pk.chrom[ok], "start": starts[ok], "end": ends[ok], "label": 1})
    n_bg = int(round(len(pos) * background_ratio))
    names = list(chrom_lengths)
    sizes = np.array([chrom_lengths[c] for c in names], dtype=float)
    by_chrom = {c: g[["start", "end"]].to_numpy() for c, g in peaks.groupby("chrom")}
    bg = []
    tries = 0
    while len(bg) < n_bg and tries < 50 * max(1, n_bg):
        tries += 1
        c = names[rng.choice(len(names), p=sizes / sizes.sum())]
        if chrom_lengths[c] <= window:
            continue
        s = int(rng.integers(0, chrom_lengths[c] - window))
        iv = by_chrom.get(c)
        if iv is not None and ((iv[:, 0] < s + window) & (iv[:, 1] > s)).any():
            continue
        bg.append((c, s, s + window, 0))
    out = pd.concat(
        [pos, pd.DataFrame(bg, columns=["chrom", "start", "end", "label"])], ignore_index=True
    )
    out = out.sort_values(["chrom", "start"], ignore_index=True)
    out.insert(0, "name", [f"{r.chrom}:{r.start}-{r.end}" for r in out.itertuples()])
    return out


def fetch_sequences(fasta: str | os.PathLike, windows: pd.DataFrame) -> list[str]:
    import pysam

    with pysam.FastaFile(str(fasta)) as fa:
        return [fa.fetch(r.chrom, int(r.start), int(r.end)).upper() for r in windows.itertuples()]


def split_by_sequence(n: int, test_fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n) < test_fraction, "test", "train")


def prepare_sequences(kind: str, params: dict, fasta, peaks_path, task_table, out) -> pd.DataFrame:
    """Build the dataset's sequence table (the contract every model reads).

    Columns: name, sequence, label, split, chrom, start, end (coordinates are
    null for task tables without them).
    """
    if kind == "peaks":
        import pysam

        with pysam.FastaFile(str(fasta)) as fa:
            lengths = dict(zip(fa.references, fa.lengths))
        win = peak_windows(
            read_peaks(peaks_path),
            lengths,
            params["window"],
            params["background_ratio"],
            params["max_peaks"],
            params["seed"],
        )
        win["sequence"] = fetch_sequences(fasta, win)
        win["split"] = split_by_sequence(len(win), params["test_fraction"], params["seed"])
    elif kind == "task":
        from saeflow.utils import read_table

        win = read_table(task_table)
        missing = {"sequence", "label"} - set(win.columns)
        if missing:
            raise SaeflowError(f"{task_table}: task table lacks column(s) {sorted(missing)}")
        if "name" not in win:
            win["name"] = [f"seq{i}" for i in range(len(win))]
        if "split" not in win:
            win["split"] = split_by_sequence(len(win), params["test_fraction"], params["seed"])
        for c in ("chrom", "start", "end"):
            if c not in win:
                win[c] = None
        if params["max_sequences"] and len(win) > params["max_sequences"]:
            rng = np.random.default_rng(params["seed"])
            win = win.iloc[np.sort(rng.choice(len(win), params["max_sequences"], replace=False))]
        win["sequence"] = win.sequence.str.upper()
    else:
        raise SaeflowError(f"unknown dataset kind {kind!r} (expected 'peaks' or 'task')")
    table = win[["name", "sequence", "label", "split", "chrom", "start", "end"]].reset_index(
        drop=True
    )
    write_table(table, out)
    log.info("prepared %d sequences (%d labelled 1)", len(table), int(table.label.sum()))
    return table

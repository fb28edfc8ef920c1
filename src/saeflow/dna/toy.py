"""The embedded toy genome: seeded, deterministic, with real JASPAR motifs planted.

The toy reference is written in exactly the formats the real data comes in
(FASTA, ENCODE narrowPeak BED, bigWig signal, a benchmark-style task table), so
every downstream rule is the one that later reads GRCh38, ENCODE and the
Nucleotide Transformer tasks; only the source differs. Because the planted
positions are known (``planted.tsv``), the workflow can measure whether an SAE
recovered them.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from saeflow.dna.motifs import load_jaspar, revcomp
from saeflow.dna.sequence import gc_content
from saeflow.utils import atomic_path, write_table

log = logging.getLogger(__name__)

PLANTED_COLUMNS = ["chrom", "start", "end", "strand", "motif_id", "motif_name", "site", "sequence"]


def _background(rng: np.random.Generator, length: int, gc: float) -> np.ndarray:
    p = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]
    return rng.choice(np.frombuffer(b"ACGT", dtype=np.uint8), size=length, p=p)


def build_toy_genome(params: dict, out_fasta, out_peaks, out_signal, out_planted) -> pd.DataFrame:
    """Build the toy genome and its annotation files.

    ``params``: seed, n_chromosomes, chromosome_length, gc, motif_temperature,
    min_spacing, motifs (list of {jaspar_id, count, peaks}), peak_halfwidth,
    jaspar_release. Returns the planted-sites table.
    """
    rng = np.random.default_rng(params["seed"])
    n_chr, L = params["n_chromosomes"], params["chromosome_length"]
    chroms = {f"chr{i + 1}": _background(rng, L, params["gc"]) for i in range(n_chr)}
    spacing = params["min_spacing"]
    margin = params["peak_halfwidth"] + 50

    # Candidate slots on a regular grid, shuffled: non-overlapping by construction.
    slots = [(c, s) for c in chroms for s in range(margin, L - margin - spacing, spacing)]
    total = sum(m["count"] for m in params["motifs"])
    if total > len(slots):
        raise ValueError(
            f"toy genome too small: {total} motifs need {total} slots of {spacing} bp, "
            f"only {len(slots)} fit; raise chromosome_length or lower counts"
        )
    order = rng.permutation(len(slots))
    rows, k = [], 0
    for spec in params["motifs"]:
        motif = load_jaspar(spec["jaspar_id"], params.get("jaspar_release", "JASPAR2024"))
        instances = motif.sample(rng, spec["count"], params["motif_temperature"])
        for inst in instances:
            chrom, slot = slots[order[k]]
            k += 1
            start = slot + int(rng.integers(0, spacing - motif.length))
            strand = "+" if rng.random() < 0.5 else "-"
            seq = inst if strand == "+" else revcomp(inst)
            chroms[chrom][start : start + motif.length] = np.frombuffer(
                seq.encode(), dtype=np.uint8
            )
            rows.append(
                dict(
                    chrom=chrom,
                    start=start,
                    end=start + motif.length,
                    strand=strand,
                    motif_id=motif.matrix_id,
                    motif_name=motif.name,
                    site="peak"
                    if spec.get("peaks")
                    else "promoter"
                    if spec.get("promoter")
                    else "background",
                    sequence=seq,
                )
            )
    planted = pd.DataFrame(rows, columns=PLANTED_COLUMNS).sort_values(
        ["chrom", "start"], ignore_index=True
    )

    _write_fasta(chroms, out_fasta)
    peaks = _peaks_from_sites(planted[planted.site == "peak"], rng, params["peak_halfwidth"], L)
    with atomic_path(out_peaks) as tmp:
        peaks.to_csv(tmp, sep="\t", header=False, index=False)
    _write_signal(chroms, peaks, out_signal, rng)
    write_table(planted, out_planted)
    log.info(
        "toy genome: %d chromosomes x %d bp, %d planted sites, %d peaks",
        n_chr,
        L,
        len(planted),
        len(peaks),
    )
    return planted


def _write_fasta(chroms: dict[str, np.ndarray], path, width: int = 60) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        for name, arr in chroms.items():
            fh.write(f">{name}\n")
            s = arr.tobytes().decode()
            for i in range(0, len(s), width):
                fh.write(s[i : i + width] + "\n")


def _peaks_from_sites(sites: pd.DataFrame, rng, halfwidth: int, chrom_len: int) -> pd.DataFrame:
    """ENCODE narrowPeak rows around each site, with jittered widths and summits."""
    rows = []
    for i, s in enumerate(sites.itertuples()):
        centre = (s.start + s.end) // 2 + int(rng.integers(-20, 21))
        left = int(rng.integers(halfwidth // 2, halfwidth + 1))
        right = int(rng.integers(halfwidth // 2, halfwidth + 1))
        start, end = max(0, centre - left), min(chrom_len, centre + right)
        signal = float(rng.gamma(4.0, 10.0))
        rows.append(
            (
                s.chrom,
                start,
                end,
                f"peak{i}",
                min(1000, int(signal * 10)),
                ".",
                signal,
                -1,
                -1,
                centre - start,
            )
        )
    cols = [
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
    return pd.DataFrame(rows, columns=cols).sort_values(["chrom", "start"], ignore_index=True)


def _write_signal(chroms, peaks: pd.DataFrame, path, rng, step: int = 10) -> None:
    import pyBigWig

    with atomic_path(path) as tmp:
        bw = pyBigWig.open(str(tmp), "w")
        bw.addHeader([(c, len(a)) for c, a in chroms.items()])
        for c, a in chroms.items():
            n = len(a) // step
            x = np.arange(n) * step + step / 2
            y = rng.gamma(1.0, 0.5, size=n)
            for p in peaks[peaks.chrom == c].itertuples():
                summit = p.start + p.peak
                y += p.signalValue * np.exp(-0.5 * ((x - summit) / 60.0) ** 2)
            bw.addEntries(c, 0, values=y.astype(float).tolist(), span=step, step=step)
        bw.close()


def build_toy_task(fasta, planted: pd.DataFrame, params: dict, out_table) -> pd.DataFrame:
    """A promoter-vs-background task in the Nucleotide Transformer benchmark layout.

    Positives: windows holding a planted promoter motif (TATA box, MA0108) at a
    fixed offset upstream of a notional TSS, as in real promoter tasks.
    Negatives: windows without any planted site, matched to the positives' GC
    content bin by bin. Columns: name, sequence, label, split, chrom, start, end.
    """
    import pysam

    rng = np.random.default_rng(params["seed"])
    length, offset = params["length"], params["motif_offset"]
    fa = pysam.FastaFile(str(fasta))
    pos = planted[planted.motif_id == params["motif_id"]]
    rows = []
    for i, s in enumerate(pos.itertuples()):
        start = s.start - offset
        if start < 0 or start + length > fa.get_reference_length(s.chrom):
            continue
        rows.append(dict(name=f"pos{i}", chrom=s.chrom, start=start, end=start + length, label=1))
    positives = pd.DataFrame(rows)
    positives["sequence"] = [
        fa.fetch(r.chrom, r.start, r.end).upper() for r in positives.itertuples()
    ]

    # Candidate negatives: random windows that overlap no planted site.
    cands = []
    tries = 0
    while len(cands) < params["negative_pool"] and tries < params["negative_pool"] * 20:
        tries += 1
        chrom = fa.references[int(rng.integers(len(fa.references)))]
        start = int(rng.integers(0, fa.get_reference_length(chrom) - length))
        hit = planted[
            (planted.chrom == chrom) & (planted.end > start) & (planted.start < start + length)
        ]
        if len(hit):
            continue
        cands.append((chrom, start, fa.fetch(chrom, start, start + length).upper()))
    cand_gc = gc_content([c[2] for c in cands])
    bins = np.linspace(0, 1, 41)
    pos_bins = np.digitize(gc_content(positives.sequence), bins)
    cand_bins = np.digitize(cand_gc, bins)
    used, negs = set(), []
    for j, b in enumerate(pos_bins):
        # nearest GC bin with an unused candidate
        for d in range(0, len(bins)):
            pool = [i for i in np.flatnonzero(np.abs(cand_bins - b) == d) if i not in used]
            if pool:
                i = pool[int(rng.integers(len(pool)))]
                used.add(i)
                c = cands[i]
                negs.append(
                    dict(
                        name=f"neg{j}",
                        chrom=c[0],
                        start=c[1],
                        end=c[1] + length,
                        label=0,
                        sequence=c[2],
                    )
                )
                break
    table = pd.concat([positives, pd.DataFrame(negs)], ignore_index=True)
    table["split"] = np.where(rng.random(len(table)) < params["test_fraction"], "test", "train")
    table = table[["name", "sequence", "label", "split", "chrom", "start", "end"]]
    write_table(table, out_table)
    log.info(
        "toy task: %d positives, %d GC-matched negatives",
        int(table.label.sum()),
        int((table.label == 0).sum()),
    )
    return table

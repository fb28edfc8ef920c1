import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pytest

from saeflow.dna.genome import (
    bgzip_and_index,
    peak_windows,
    prepare_sequences,
    read_peaks,
    validate_fasta,
)
from saeflow.utils import SaeflowError


def write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def test_validate_fasta_good(tmp_path):
    f = write(tmp_path / "g.fa", ">a desc\nACGT\nAC\n>b\nNNNN\n")
    assert validate_fasta(f) == {"a": 6, "b": 4}


@pytest.mark.parametrize(
    "text,problem",
    [
        (">a\nACGT\nAC", "truncated"),
        (">a\nACGT\n>b\n", "no sequence"),
        (">a\nACXT\n", "non-nucleotide"),
        ("ACGT\n>a\nAC\n", "before the first"),
        (">a\nAC\n>a\nAC\n", "duplicated"),
        ("", "empty"),
    ],
)
def test_validate_fasta_errors_name_file_and_problem(tmp_path, text, problem):
    f = write(tmp_path / "bad.fa", text)
    with pytest.raises(SaeflowError) as e:
        validate_fasta(f)
    assert "bad.fa" in str(e.value) and problem in str(e.value)


def test_truncated_gzip_is_detected(tmp_path):
    data = gzip.compress((">a\n" + "ACGT" * 5000 + "\n").encode())
    f = tmp_path / "cut.fa.gz"
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(SaeflowError, match="truncated or corrupt"):
        validate_fasta(f)


def test_bgzip_and_index_roundtrip(tmp_path):
    f = write(tmp_path / "g.fa", ">chr1\n" + "ACGTTGCA" * 100 + "\n>chr2\n" + "GGCC" * 10 + "\n")
    out = tmp_path / "ref" / "genome.fa.gz"
    bgzip_and_index(f, out)
    with pysam.FastaFile(str(out)) as fa:
        assert fa.fetch("chr1", 8, 16) == "ACGTTGCA"
        assert fa.get_reference_length("chr2") == 40
    assert Path(str(out) + ".fai").exists() and Path(str(out) + ".gzi").exists()


def test_bgzip_and_index_leaves_nothing_on_failure(tmp_path):
    f = write(tmp_path / "g.fa", ">chr1\nACGT\nAC")  # no final newline: cut off
    out = tmp_path / "ref" / "genome.fa.gz"
    with pytest.raises(SaeflowError):
        bgzip_and_index(f, out)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_read_peaks_narrowpeak_and_bed3(tmp_path):
    np_ = write(tmp_path / "p.bed", "chr1\t100\t300\tp\t10\t.\t5\t-1\t-1\t50\n")
    assert read_peaks(np_).summit.tolist() == [150]
    b3 = write(tmp_path / "b.bed", "chr1\t100\t300\n")
    assert read_peaks(b3).summit.tolist() == [200]
    bad = write(tmp_path / "x.bed", "chr1\t300\t100\n")
    with pytest.raises(SaeflowError, match="end <= start"):
        read_peaks(bad)


def test_peak_windows_background_avoids_peaks():
    peaks = pd.DataFrame(
        {
            "chrom": ["c"] * 5,
            "start": [1000, 3000, 5000, 7000, 9000],
            "end": [1200, 3200, 5200, 7200, 9200],
        }
    )
    peaks["summit"] = peaks.start + 100
    w = peak_windows(peaks, {"c": 12000}, 64, 2.0, 0, seed=0)
    assert (w.end - w.start == 64).all()
    assert (w.label == 1).sum() == 5 and (w.label == 0).sum() == 10
    bg = w[w.label == 0]
    for r in bg.itertuples():
        assert not ((peaks.start < r.end) & (peaks.end > r.start)).any()
    pos = w[w.label == 1]
    assert sorted((pos.start + 32).tolist()) == sorted(peaks.summit.tolist())


def test_prepare_sequences_from_toy_peaks(toy_genome, tmp_path):
    d, planted = toy_genome
    params = dict(window=64, background_ratio=1.0, max_peaks=0, seed=0, test_fraction=0.3)
    t = prepare_sequences(
        "peaks", params, d / "genome.fa.gz", d / "peaks.bed", None, tmp_path / "s.parquet"
    )
    assert list(t.columns) == ["name", "sequence", "label", "split", "chrom", "start", "end"]
    assert (t.sequence.str.len() == 64).all()
    assert set(t.split) == {"train", "test"}
    # Most peak windows hold a whole planted CTCF; background windows hold none.
    ctcf = planted[planted.motif_id == "MA0139.1"]

    def holds(r):
        return ((ctcf.chrom == r.chrom) & (ctcf.start >= r.start) & (ctcf.end <= r.end)).any()

    frac_pos = np.mean([holds(r) for r in t[t.label == 1].itertuples()])
    frac_bg = np.mean([holds(r) for r in t[t.label == 0].itertuples()])
    assert frac_pos > 0.6 and frac_bg == 0

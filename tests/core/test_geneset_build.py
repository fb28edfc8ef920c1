"""saeflow.sources.build_geneset: each gene-set source's table from its raw files (no network)."""

from __future__ import annotations

import gzip

import pandas as pd
import pytest

from saeflow.sources import build_geneset


def test_gmt_sources_read_the_library_file_and_name_the_collection(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "KEGG.gmt").write_text("SET1\tdesc\tTP53\tMDM2,1.0\n")
    build_geneset({"source": "enrichr", "library": "KEGG"}, "kegg", raw, tmp_path / "k.gmt")
    assert (tmp_path / "k.gmt").read_text().split() == ["SET1", "kegg", "TP53", "MDM2"]
    (raw / "hall.gmt").write_text("H1\t\tA\tB\n")
    build_geneset({"source": "gmt", "library": None}, "hall", raw, tmp_path / "h.gmt")
    assert (tmp_path / "h.gmt").read_text().split() == ["H1", "hall", "A", "B"]
    with pytest.raises(FileNotFoundError):  # the library's file, not the entry's name
        build_geneset({"source": "gmt", "library": "missing"}, "hall", raw, tmp_path / "x.gmt")


def test_network_sources_write_their_edge_tables(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "trrust.tsv").write_text("TP53\tBAX\tActivation\t1\nTP53\tMDM2\tActivation\t2\n")
    build_geneset({"source": "trrust", "library": None}, "trrust", raw, tmp_path / "t.tsv")
    t = pd.read_csv(tmp_path / "t.tsv", sep="\t")
    assert t.target.tolist() == ["BAX", "MDM2"] and list(t.columns)[:2] == ["source", "target"]
    with gzip.open(raw / "links.txt.gz", "wt") as f:
        f.write("protein1 protein2 combined_score\nP1 P2 900\nP2 P3 400\n")
    with gzip.open(raw / "info.txt.gz", "wt") as f:
        f.write("#string_protein_id\tpreferred_name\nP1\tTP53\nP2\tMDM2\nP3\tBAX\n")
    spec = {"source": "string", "library": None, "min_score": 700}
    build_geneset(spec, "string", raw, tmp_path / "s.tsv")
    s = pd.read_csv(tmp_path / "s.tsv", sep="\t")
    assert s.to_dict("records") == [{"source": "MDM2", "target": "TP53", "combined_score": 900}]
    build_geneset(dict(spec, min_score=300), "string", raw, tmp_path / "s.tsv")
    assert len(pd.read_csv(tmp_path / "s.tsv", sep="\t")) == 2

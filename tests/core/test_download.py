"""saeflow.download.fetch and the source adapters of saeflow.sources, against a local HTTP server.

Nothing reaches the internet: tests/dlserver.py serves fixture files (in the layouts of GENCODE,
ENCODE, the NT benchmark, Enrichr, TRRUST, STRING, figshare and a minimal Hugging Face Hub) from
127.0.0.1 on a random port.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import socket

import pandas as pd
import pytest
from dlserver import (
    ENRICHR,
    FASTA,
    GMT,
    H5AD,
    FixtureServer,
    encode_metadata,
    gz,
    md5,
    populate,
    sha256,
)

from saeflow.download import checksum_record_path, fetch, fetch_json
from saeflow.utils import SaeflowError

FAST = dict(backoff=0.0, timeout=10.0)


@pytest.fixture()
def server():
    with FixtureServer() as s:
        yield s


@pytest.fixture()
def src(server):
    return populate(server)


def leftovers(d):
    """Temporary files a download may have left in ``d``."""
    return [p.name for p in d.rglob("*") if p.name.startswith(".") or p.suffix in (".part", ".tmp")]


# --------------------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------------------


def test_fetch_puts_the_file_in_place_and_records_its_checksum(server, tmp_path):
    data = b"ACGT" * 5000
    url = server.add("/data/file.bin", data)
    dest = tmp_path / "sub" / "file.bin"
    rec = fetch(url, dest, sha256=sha256(data), md5=md5(data), size=len(data), **FAST)
    assert dest.read_bytes() == data
    saved = json.loads(checksum_record_path(dest).read_text())
    assert saved == rec
    assert saved["url"] == url and saved["sha256"] == sha256(data) and saved["md5"] == md5(data)
    assert saved["size"] == len(data) and saved["date"].startswith("20")
    assert not leftovers(tmp_path)


def test_a_truncated_transfer_is_retried_and_resumed(server, tmp_path):
    data = bytes(range(256)) * 400
    url = server.add("/data/big.bin", data, truncate=2)  # the first two transfers stop halfway
    dest = tmp_path / "big.bin"
    fetch(url, dest, sha256=sha256(data), retries=3, **FAST)
    assert dest.read_bytes() == data
    gets = [r for r in server.requests_to("/data/big.bin") if r[0] == "GET"]
    assert len(gets) == 3
    # resumed, not restarted
    assert "Range" not in gets[0][2] and gets[1][2]["Range"].startswith("bytes=")
    assert not leftovers(tmp_path)


def test_a_truncated_transfer_restarts_when_the_server_ignores_ranges(server, tmp_path):
    data = b"xyz" * 9000
    url = server.add("/data/noranges.bin", data, truncate=1, ranges=False)
    dest = tmp_path / "noranges.bin"
    fetch(url, dest, sha256=sha256(data), retries=2, **FAST)
    assert dest.read_bytes() == data


def test_a_transfer_that_always_truncates_fails_clearly(server, tmp_path):
    url = server.add("/data/cut.bin", b"0123456789" * 1000, truncate=-1, ranges=False)
    dest = tmp_path / "cut.bin"
    with pytest.raises(SaeflowError) as e:
        fetch(url, dest, retries=2, **FAST)
    msg = str(e.value)
    assert url in msg and "after 3 attempts" in msg and "truncated" in msg
    assert not dest.exists() and not checksum_record_path(dest).exists() and not leftovers(tmp_path)


def test_a_checksum_mismatch_leaves_nothing(server, tmp_path):
    data = b"payload" * 100
    url = server.add("/data/p.bin", data)
    dest = tmp_path / "p.bin"
    wrong = "0" * 64
    with pytest.raises(SaeflowError) as e:
        fetch(url, dest, sha256=wrong, **FAST)
    msg = str(e.value)
    assert url in msg and "sha256 mismatch" in msg and wrong in msg and sha256(data) in msg
    assert list(tmp_path.iterdir()) == []  # no file, no temp file, no record
    with pytest.raises(SaeflowError, match="md5 mismatch"):
        fetch(url, dest, md5="f" * 32, **FAST)
    with pytest.raises(SaeflowError, match="size mismatch: expected 5"):
        fetch(url, dest, size=5, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_a_404_fails_at_once_naming_the_url(server, tmp_path):
    url = server.url("/nope/missing.fa.gz")
    with pytest.raises(SaeflowError) as e:
        fetch(url, tmp_path / "x.fa.gz", retries=3, **FAST)
    assert url in str(e.value) and "HTTP 404" in str(e.value)
    assert len(server.requests_to("/nope/")) == 1  # not retried
    assert list(tmp_path.iterdir()) == []


def test_server_errors_are_retried(server, tmp_path):
    url = server.add("/data/busy.bin", b"ok" * 10, fail_first=2)
    fetch(url, tmp_path / "busy.bin", retries=2, **FAST)
    assert (tmp_path / "busy.bin").read_bytes() == b"ok" * 10
    url = server.add("/data/down.bin", b"ok", fail_first=10)
    with pytest.raises(SaeflowError, match=r"after 2 attempts: HTTP 503"):
        fetch(url, tmp_path / "down.bin", retries=1, **FAST)


def test_an_unreachable_host_fails_after_the_retries(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/file"
    slept = []
    with pytest.raises(SaeflowError) as e:
        fetch(url, tmp_path / "file", retries=2, backoff=1.0, sleep=slept.append)
    assert (
        url in str(e.value)
        and "after 3 attempts" in str(e.value)
        and "connection failed" in str(e.value)
    )
    assert slept == [1.0, 2.0]  # exponential backoff
    assert list(tmp_path.iterdir()) == []


def test_an_html_page_instead_of_the_file_is_refused(server, tmp_path):
    url = server.add(
        "/drive/uc", "<html>Google Drive can't scan this file for viruses</html>", "text/html"
    )
    with pytest.raises(SaeflowError, match="HTML page"):
        fetch(url, tmp_path / "best_model.pt", **FAST)
    assert list(tmp_path.iterdir()) == []


def test_fetch_reads_file_urls(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("local")
    fetch(src.as_uri(), tmp_path / "out" / "in.txt", **FAST)
    assert (tmp_path / "out" / "in.txt").read_text() == "local"


def test_fetch_json(server):
    url = server.add("/api/x.json", json.dumps({"a": 1}), "application/json")
    assert fetch_json(url, **FAST) == {"a": 1}
    with pytest.raises(SaeflowError, match="HTTP 404"):
        fetch_json(server.url("/api/none.json"), **FAST)


# --------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------


def test_encode_file_is_checked_against_its_metadata(server, src, tmp_path):
    from saeflow.sources import encode_file

    e = src["encode"]
    dest = tmp_path / "ENCFF000PKS.bed.gz"
    rec = encode_file(
        "ENCFF000PKS",
        dest,
        "bed.gz",
        e["url_template"],
        e["metadata_url_template"],
        file_format="bed",
        assembly="GRCh38",
        **FAST,
    )
    assert dest.read_bytes() == src["peaks_bytes"]
    saved = json.loads(checksum_record_path(dest).read_text())
    assert saved["md5"] == rec["encode"]["md5sum"] == md5(src["peaks_bytes"])
    assert saved["encode"]["assembly"] == "GRCh38" and saved["encode"]["file_format"] == "bed"
    # the wrong kind of file, the wrong assembly, a file that differs from its metadata
    with pytest.raises(SaeflowError, match="'bigWig' file, not 'bed'"):
        encode_file(
            "ENCFF000SIG",
            tmp_path / "s.bed.gz",
            "bed.gz",
            e["url_template"],
            e["metadata_url_template"],
            file_format="bed",
            **FAST,
        )
    with pytest.raises(SaeflowError, match="on assembly 'GRCh38', but the reference is 'hg19'"):
        encode_file(
            "ENCFF000PKS",
            tmp_path / "h.bed.gz",
            "bed.gz",
            e["url_template"],
            e["metadata_url_template"],
            file_format="bed",
            assembly="hg19",
            **FAST,
        )
    meta = encode_metadata("ENCFF111BAD", b"other bytes", "bed")
    server.add("/files/ENCFF111BAD/?format=json", json.dumps(meta), "application/json")
    server.add("/files/ENCFF111BAD/@@download/ENCFF111BAD.bed.gz", b"these bytes")
    with pytest.raises(SaeflowError, match="mismatch"):
        encode_file(
            "ENCFF111BAD",
            tmp_path / "bad.bed.gz",
            "bed.gz",
            e["url_template"],
            e["metadata_url_template"],
            **FAST,
        )
    assert not (tmp_path / "bad.bed.gz").exists() and not (tmp_path / "s.bed.gz").exists()


def test_nt_task_becomes_a_task_table(server, src, tmp_path):
    from saeflow.sources import nt_task

    table = nt_task(
        "promoter_tata",
        tmp_path / "task.parquet",
        tmp_path / "raw",
        src["nt_repo"],
        src["nt_commit"],
        server.base,
        "{task}/{split}.fna",
        ["train", "test"],
        **FAST,
    )
    df = pd.read_parquet(tmp_path / "task.parquet")
    assert list(df.columns) == ["name", "sequence", "label", "split"]
    assert df.split.tolist() == ["train"] * 3 + ["test"] * 2
    assert df.label.tolist() == [1, 0, 1, 0, 1] and df.name[0] == "seq_0|1"
    assert df.sequence[0] == "TATAAAAGGCGCGCATATAAAAGGCC"  # lines joined
    assert df.sequence[1] == "ACGTACGTACGTACGTACGT"  # upper-cased
    assert table.equals(df)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir() if not p.name.endswith(".json")) == [
        "test.fna",
        "train.fna",
    ]
    with pytest.raises(SaeflowError, match="HTTP 404.*not a task of the NT benchmark"):
        nt_task(
            "promoter_tatta",
            tmp_path / "t2.parquet",
            tmp_path / "raw2",
            src["nt_repo"],
            src["nt_commit"],
            server.base,
            "{task}/{split}.fna",
            ["train"],
            **FAST,
        )
    assert not (tmp_path / "raw2").exists() and not (tmp_path / "t2.parquet").exists()


def test_nt_headers_without_a_label_are_refused(tmp_path):
    from saeflow.sources import parse_nt_fasta

    (tmp_path / "x.fna").write_text(">seq_0\nACGT\n")
    with pytest.raises(SaeflowError, match="no '\\|<label>' suffix"):
        parse_nt_fasta(tmp_path / "x.fna")


def test_nt_parquet_splits_are_read(tmp_path):
    from saeflow.sources import nt_task_table

    pd.DataFrame(
        {"sequence": ["acgt", "ttaa"], "label": [1, 0], "name": ["a", "b"], "task": "t"}
    ).to_parquet(tmp_path / "train.parquet")
    df = nt_task_table({"train": tmp_path / "train.parquet"}, tmp_path / "task.parquet")
    assert df.sequence.tolist() == ["ACGT", "TTAA"] and df.split.unique().tolist() == ["train"]


def test_cells_h5ad_must_be_hdf5(server, src, tmp_path):
    from saeflow.sources import cells_h5ad

    dest = tmp_path / "cells.h5ad"
    cells_h5ad(src["h5ad_url"], dest, sha256=src["h5ad_sha256"], **FAST)
    assert dest.read_bytes() == H5AD
    url = server.add(
        "/ndownloader/files/1",
        b"<?xml version='1.0'?><Error>AccessDenied</Error>",
        "application/xml",
    )
    with pytest.raises(SaeflowError, match="not an HDF5 file"):
        cells_h5ad(url, tmp_path / "bad.h5ad", **FAST)
    assert not (tmp_path / "bad.h5ad").exists() and not leftovers(tmp_path)


def test_tabula_sapiens_zip_is_unpacked_to_its_h5ad(server, tmp_path):
    """figshare serves Tabula Sapiens as TS_<tissue>.h5ad.zip: the .h5ad inside lands under the
    dataset's name."""
    import io
    import zipfile

    from saeflow.download import checksum_record_path
    from saeflow.sources import cells_h5ad
    from saeflow.utils import sha256 as sha

    def zipped(files):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        return buf.getvalue()

    one = zipped({"TS_Blood.h5ad": H5AD, "README.txt": b"Tabula Sapiens"})
    url = server.add("/ndownloader/files/34701964", one)
    dest = tmp_path / "ts_blood.h5ad"
    rec = cells_h5ad(url, dest, sha256=hashlib.sha256(one).hexdigest(), **FAST)
    assert dest.read_bytes() == H5AD and rec["member"] == "TS_Blood.h5ad"
    assert json.loads(checksum_record_path(dest).read_text())["url"] == url
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ts_blood.h5ad",
        checksum_record_path(dest).name,
    ]
    # two .h5ad members: the dataset must name one; a member that is not HDF5 is refused
    two = server.add("/two.zip", zipped({"a/TS_Blood.h5ad": H5AD, "a/TS_Lung.h5ad": H5AD}))
    with pytest.raises(SaeflowError, match="2 .h5ad members.*name one"):
        cells_h5ad(two, tmp_path / "two.h5ad", **FAST)
    cells_h5ad(two, tmp_path / "lung.h5ad", member="TS_Lung.h5ad", **FAST)
    bad = server.add("/bad.zip", zipped({"x.h5ad": b"not hdf5 at all"}))
    with pytest.raises(SaeflowError, match="not an HDF5 file"):
        cells_h5ad(bad, tmp_path / "bad.h5ad", **FAST)
    assert not (tmp_path / "bad.h5ad").exists() and not (tmp_path / "two.h5ad").exists()
    assert not leftovers(tmp_path)
    assert sha(tmp_path / "lung.h5ad") == hashlib.sha256(H5AD).hexdigest()


def test_enrichr_library_becomes_a_clean_gmt(server, src, tmp_path):
    import gseapy

    from saeflow.sources import download_geneset, write_gmt

    spec = {"enrichr_url": src["enrichr_url"], "sha256": ""}
    download_geneset("enrichr", spec, "KEGG_2021_Human", tmp_path / "raw", **FAST)
    raw = tmp_path / "raw" / "KEGG_2021_Human.gmt"
    assert raw.read_text() == ENRICHR
    sets = write_gmt(raw, tmp_path / "KEGG_2021_Human.gmt", "KEGG_2021_Human")
    back = gseapy.read_gmt(str(tmp_path / "KEGG_2021_Human.gmt"))
    assert (
        back
        == sets
        == {
            "apoptotic process (GO:0006915)": ["TP53", "BAX", "CASP3"],
            "cell cycle (GO:0007049)": ["CDK1", "CCNB1", "TP53"],
        }
    )
    download_geneset("gmt", {"url": src["gmt_url"]}, "hallmark", tmp_path / "raw2", **FAST)
    assert write_gmt(tmp_path / "raw2" / "hallmark.gmt", tmp_path / "h.gmt", "h") == {
        "SET_A": ["GENE1", "GENE2"],
        "SET_B": ["GENE3"],
    }
    (tmp_path / "empty.gmt").write_text("<html>not a library</html>\n")
    with pytest.raises(SaeflowError, match="no gene set"):
        write_gmt(tmp_path / "empty.gmt", tmp_path / "e.gmt", "e")
    assert GMT  # the fixture is the one served


def test_trrust_edges(server, src, tmp_path):
    from saeflow.sources import download_geneset, trrust_edges

    download_geneset(
        "trrust", {"trrust_url": src["trrust_url"]}, "trrust", tmp_path / "raw", **FAST
    )
    df = trrust_edges(tmp_path / "raw" / "trrust.tsv", tmp_path / "trrust.tsv")
    back = pd.read_csv(tmp_path / "trrust.tsv", sep="\t")
    assert list(back.columns) == ["source", "target", "mode", "pmids"] and len(back) == len(df) == 3
    assert back[(back.source == "TP53")].iloc[0].to_dict() == {
        "source": "TP53",
        "target": "BAX",
        "mode": "Activation",
        "pmids": "11111111;22222222",
    }


def test_string_edges_are_filtered_named_and_undirected(server, src, tmp_path):
    from saeflow.sources import download_geneset, string_edges

    spec = {"string_links_url": src["string_links_url"], "string_info_url": src["string_info_url"]}
    download_geneset("string", spec, "string", tmp_path / "raw", **FAST)
    assert {p.name for p in (tmp_path / "raw").iterdir() if p.suffix == ".gz"} == {
        "links.txt.gz",
        "info.txt.gz",
    }
    string_edges(
        tmp_path / "raw" / "links.txt.gz",
        tmp_path / "raw" / "info.txt.gz",
        tmp_path / "s.tsv",
        min_score=700,
    )
    back = pd.read_csv(tmp_path / "s.tsv", sep="\t")
    # 400 dropped by the cutoff; ENSP0009 has no symbol; each pair once, source < target
    assert back.to_dict("records") == [
        {"source": "CDKN1A", "target": "MDM2", "combined_score": 700},
        {"source": "MDM2", "target": "TP53", "combined_score": 900},
    ]
    string_edges(
        tmp_path / "raw" / "links.txt.gz",
        tmp_path / "raw" / "info.txt.gz",
        tmp_path / "s2.tsv",
        min_score=300,
        chunksize=2,
    )
    assert len(pd.read_csv(tmp_path / "s2.tsv", sep="\t")) == 3


def test_hub_snapshot_runs_snapshot_download_for_real(server, src, tmp_path):
    from saeflow.sources import hub_snapshot

    dest = tmp_path / "models" / "m"
    rec = hub_snapshot(
        src["model_repo"],
        "main",
        dest,
        allow_patterns=["*.json", "*.safetensors"],
        endpoint=server.base,
        n_layers=2,
        family="toy",
        retries=0,
    )
    assert sorted(p.name for p in dest.iterdir()) == [
        "config.json",
        "model.safetensors",
        "saeflow_download.json",
        "tokenizer.json",
    ]  # README and TF weights not fetched
    saved = json.loads((dest / "saeflow_download.json").read_text())
    assert saved == json.loads(json.dumps(rec))
    assert (
        saved["commit"] == src["model_commit"]
        and saved["revision"] == "main"
        and saved["family"] == "toy"
    )
    assert saved["files"]["model.safetensors"]["sha256"] == sha256(b"\0" * 2048)
    assert server.requests_to(f"/api/models/{src['model_repo']}/revision/main")
    # fetched at the commit
    assert server.requests_to(f"/{src['model_repo']}/resolve/{src['model_commit']}/")
    assert not leftovers(dest.parent)


def test_hub_snapshot_errors_leave_nothing(server, src, tmp_path):
    from saeflow.sources import hub_snapshot

    dest = tmp_path / "m"
    with pytest.raises(SaeflowError, match="n_layers=12, but config.json:num_hidden_layers says 2"):
        hub_snapshot(src["model_repo"], "main", dest, endpoint=server.base, n_layers=12, retries=0)
    with pytest.raises(SaeflowError, match="revision 'v9' not found"):
        hub_snapshot(src["model_repo"], "v9", dest, endpoint=server.base, retries=0)
    with pytest.raises(SaeflowError, match="org/absent@main.*not found or not accessible"):
        hub_snapshot("org/absent", "main", dest, endpoint=server.base, retries=0)
    with pytest.raises(SaeflowError, match="no file matched"):
        hub_snapshot(
            src["model_repo"],
            "main",
            dest,
            allow_patterns=["*.ckpt"],
            endpoint=server.base,
            retries=0,
        )
    assert list(tmp_path.iterdir()) == []


def test_url_files_for_a_checkpoint_outside_the_hub(server, src, tmp_path):
    from saeflow.sources import url_files

    dest = tmp_path / "scgpt"
    url_files(src["scgpt_files"], dest, n_layers=12, family="scgpt", **FAST)
    assert sorted(p.name for p in dest.iterdir()) == [
        "args.json",
        "best_model.pt",
        "saeflow_download.json",
        "vocab.json",
    ]
    rec = json.loads((dest / "saeflow_download.json").read_text())
    assert (
        rec["files"]["best_model.pt"]["sha256"] == sha256(b"\2" * 4096) and rec["family"] == "scgpt"
    )
    bad = [dict(f) for f in src["scgpt_files"]]
    bad[1]["sha256"] = "1" * 64
    with pytest.raises(SaeflowError, match="sha256 mismatch"):
        url_files(bad, tmp_path / "bad", **FAST)
    with pytest.raises(SaeflowError, match="n_layers=4, but args.json:nlayers says 12"):
        url_files(src["scgpt_files"], tmp_path / "bad", n_layers=4, **FAST)
    assert not (tmp_path / "bad").exists() and not leftovers(tmp_path)


def test_fasta_download_is_what_index_fasta_reads(server, src, tmp_path):
    from saeflow.dna.genome import bgzip_and_index

    raw = tmp_path / "GRCh38.primary_assembly.genome.fa.gz"
    fetch(src["fasta_url"], raw, md5=src["fasta_md5"], **FAST)
    assert gzip.decompress(raw.read_bytes()).decode() == FASTA
    lengths = bgzip_and_index(raw, tmp_path / "genome.fa.gz")
    assert lengths == {"chr1": 320, "chr2": 240}
    assert gz("x")  # helper used by the fixtures

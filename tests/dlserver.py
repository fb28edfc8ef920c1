"""A local HTTP server (127.0.0.1, random port, a thread) that stands in for the download sources.

Static routes serve bytes (with ``Range`` support, and on demand a transfer cut short a given
number of times); :meth:`FixtureServer.add_hub_repo` adds a minimal Hugging Face Hub for one
repo: the ``/api/{models,datasets}/<repo>/revision/<rev>`` and ``/tree/<commit>`` JSON
endpoints and ``/<repo>/resolve/<rev>/<file>`` (HEAD and GET, with the ETag, X-Repo-Commit and
Content-Length headers huggingface_hub reads), enough for ``snapshot_download`` to run for real.
Nothing here reaches the internet.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    data: bytes
    content_type: str = "application/octet-stream"
    truncate: int = 0  # cut the body short this many times (-1: always)
    ranges: bool = True  # honour Range requests
    status: int = 200
    fail_first: int = 0  # answer 503 to this many requests first
    served: int = 0


@dataclass
class HubRepo:
    repo_id: str
    kind: str  # "models" or "datasets"
    commit: str
    refs: dict[str, str]
    files: dict[str, bytes]


class FixtureServer:
    def __init__(self):
        self.routes: dict[str, Route] = {}
        self.repos: dict[tuple[str, str], HubRepo] = {}
        self.log: list[tuple[str, str, dict]] = []  # (method, path, headers)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_HEAD(self):
                server._handle(self, head=True)

            def do_GET(self):
                server._handle(self, head=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, path: str) -> str:
        return self.base + path

    def add(
        self, path: str, data: bytes | str, content_type: str = "application/octet-stream", **kw
    ) -> str:
        if isinstance(data, str):
            data = data.encode()
        self.routes[path] = Route(data, content_type, **kw)
        return self.url(path)

    def add_hub_repo(
        self,
        repo_id: str,
        files: dict[str, bytes | str],
        commit: str | None = None,
        refs: tuple[str, ...] = ("main",),
        kind: str = "models",
    ) -> str:
        files = {k: v.encode() if isinstance(v, str) else v for k, v in files.items()}
        commit = commit or hashlib.sha1(repr(sorted(files)).encode() + repo_id.encode()).hexdigest()
        self.repos[(kind, repo_id)] = HubRepo(
            repo_id, kind, commit, {r: commit for r in refs}, files
        )
        return commit

    def requests_to(self, prefix: str) -> list[tuple[str, str, dict]]:
        return [r for r in self.log if r[1].startswith(prefix)]

    # ----------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        with self._lock:
            self.log.append((h.command, h.path, dict(h.headers)))
        parsed = urllib.parse.urlsplit(h.path)
        path = urllib.parse.unquote(parsed.path)
        route = self.routes.get(h.path) or self.routes.get(parsed.path)
        if route is not None:
            return self._serve(h, route, head)
        hub = self._hub(path)
        if hub is not None:
            return hub(h, head)
        self._send(h, 404, b'{"error": "not found"}', "application/json", head)

    def _send(
        self, h, status: int, body: bytes, ctype: str, head: bool, extra: dict | None = None
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _serve(self, h, route: Route, head: bool, extra: dict | None = None) -> None:
        if route.status != 200:
            return self._send(h, route.status, b"error", "text/plain", head)
        with self._lock:
            busy = route.fail_first > 0
            if busy:
                route.fail_first -= 1
        if busy:
            return self._send(h, 503, b"busy", "text/plain", head)
        data, start = route.data, 0
        rng = h.headers.get("Range")
        status = 200
        if rng and route.ranges and rng.startswith("bytes="):
            first = rng[len("bytes=") :].split("-")[0]
            start = int(first or 0)
            if start >= len(data):
                return self._send(h, 416, b"", route.content_type, head)
            status = 206
        body = data[start:]
        h.send_response(status)
        h.send_header("Content-Type", route.content_type)
        h.send_header("Content-Length", str(len(body)))
        if route.ranges:
            h.send_header("Accept-Ranges", "bytes")
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if head:
            return
        cut = False
        with self._lock:
            if route.truncate != 0 and len(body) > 1:
                cut = True
                if route.truncate > 0:
                    route.truncate -= 1
            route.served += 1
        if cut:  # announce everything, send half, hang up
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            try:
                import socket

                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        h.wfile.write(body)

    # --- a minimal Hugging Face Hub ----------------------------------------------------

    def _hub(self, path: str):
        parts = path.strip("/").split("/")
        # /api/{models,datasets}/<org>/<name>/{revision,tree}/<rev>[/...]
        if len(parts) >= 6 and parts[0] == "api" and parts[1] in ("models", "datasets"):
            repo = self.repos.get((parts[1], f"{parts[2]}/{parts[3]}"))
            if repo is None:
                return lambda h, head: self._send(
                    h,
                    404,
                    b'{"error": "Repository not found"}',
                    "application/json",
                    head,
                    {"X-Error-Code": "RepoNotFound"},
                )
            rev = parts[5]
            commit = repo.refs.get(rev, rev if rev == repo.commit else None)
            if commit is None:
                return lambda h, head: self._send(
                    h,
                    404,
                    b'{"error": "Invalid rev id"}',
                    "application/json",
                    head,
                    {"X-Error-Code": "RevisionNotFound"},
                )
            if parts[4] == "revision":
                body = {
                    "id": repo.repo_id,
                    "modelId": repo.repo_id,
                    "sha": commit,
                    "private": False,
                    "siblings": [{"rfilename": f} for f in sorted(repo.files)],
                }
            elif parts[4] == "tree":
                body = [
                    {"type": "file", "oid": hashlib.sha1(d).hexdigest(), "size": len(d), "path": f}
                    for f, d in sorted(repo.files.items())
                ]
            else:
                return None
            data = json.dumps(body).encode()
            return lambda h, head: self._send(h, 200, data, "application/json", head)
        # /<org>/<name>/resolve/<rev>/<file...>  and  /datasets/<org>/<name>/resolve/<rev>/<file...>
        kind = "models"
        if parts and parts[0] == "datasets":
            kind, parts = "datasets", parts[1:]
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = self.repos.get((kind, f"{parts[0]}/{parts[1]}"))
            if repo is None:
                return None
            rev, fname = parts[3], "/".join(parts[4:])
            commit = repo.refs.get(rev, rev if rev == repo.commit else None)
            if commit is None or fname not in repo.files:
                return lambda h, head: self._send(
                    h,
                    404,
                    b"Entry not found",
                    "text/plain",
                    head,
                    {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit},
                )
            data = repo.files[fname]
            extra = {"ETag": f'"{hashlib.sha1(data).hexdigest()}"', "X-Repo-Commit": commit}
            route = Route(data)
            return lambda h, head: self._serve(h, route, head, extra)
        return None


# --------------------------------------------------------------------------------------
# fixture files in the layouts of the real sources
# --------------------------------------------------------------------------------------

NT_TRAIN = (
    ">seq_0|1\nTATAAAAGGCGCGCATATAAAA\nGGCC\n>seq_1|0\nacgtacgtacgtacgtacgt\n"
    ">seq_2|1\nTTTATAAAAGGGCCC\n"
)
NT_TEST = ">seq_3|0\nGGGGCCCCAAAATTTT\n>seq_4|1\nCTATAAAAGC\n"
# Enrichr's text endpoint: term, empty description, genes (some as SYMBOL,weight), a trailing tab.
ENRICHR = (
    "apoptotic process (GO:0006915)\t\tTP53\tBAX\tCASP3\t\n"
    "cell cycle (GO:0007049)\t\tCDK1,1.0\tCCNB1,0.5\tTP53\t\n"
)
GMT = "SET_A\thttp://example/a\tGENE1\tGENE2\nSET_B\t\tGENE3\n"
TRRUST = (
    "AATF\tBAX\tRepression\t22909821\nAATF\tCDKN1A\tUnknown\t17157788\n"
    "TP53\tBAX\tActivation\t11111111;22222222\nTP53\tBAX\tActivation\t11111111;22222222\n"
)
STRING_LINKS = (
    "protein1 protein2 combined_score\n"
    "9606.ENSP0001 9606.ENSP0002 900\n9606.ENSP0002 9606.ENSP0001 900\n"
    "9606.ENSP0001 9606.ENSP0003 400\n9606.ENSP0003 9606.ENSP0001 400\n"
    "9606.ENSP0002 9606.ENSP0003 700\n9606.ENSP0003 9606.ENSP0002 700\n"
    "9606.ENSP0001 9606.ENSP0009 950\n"
)
STRING_INFO = (
    "#string_protein_id\tpreferred_name\tprotein_size\tannotation\n"
    "9606.ENSP0001\tTP53\t393\tCellular tumor antigen p53\n"
    "9606.ENSP0002\tMDM2\t491\tE3 ubiquitin-protein ligase Mdm2\n"
    "9606.ENSP0003\tCDKN1A\t164\tCyclin-dependent kinase inhibitor 1\n"
)
FASTA = ">chr1\n" + "ACGTTGCA" * 40 + "\n>chr2\n" + "GGCCAATT" * 30 + "\n"
NARROWPEAK = (
    "chr1\t10\t60\tp1\t1000\t.\t5.0\t10.0\t8.0\t25\nchr2\t20\t80\tp2\t900\t.\t4.0\t9.0\t7.0\t30\n"
)
H5AD = b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4  # an HDF5 signature, then anything


def gz(text: str | bytes) -> bytes:
    import gzip

    return gzip.compress(text.encode() if isinstance(text, str) else text, mtime=0)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_metadata(
    accession: str, data: bytes, file_format: str, assembly: str = "GRCh38", ext: str = "bed.gz"
) -> dict:
    """The fields of ENCODE's /files/<acc>/?format=json that the download reads (and a few more)."""
    return {
        "@id": f"/files/{accession}/",
        "accession": accession,
        "assembly": assembly,
        "file_format": file_format,
        "file_type": "bed narrowPeak" if file_format == "bed" else "bigWig",
        "output_type": "conservative IDR thresholded peaks"
        if file_format == "bed"
        else "fold change over control",
        "status": "released",
        "md5sum": md5(data),
        "file_size": len(data),
        "href": f"/files/{accession}/@@download/{accession}.{ext}",
        "dataset": "/experiments/ENCSR000DKV/",
    }


def populate(server: FixtureServer) -> dict:
    """Register every fixture source on ``server``; return their URLs and expected checksums."""
    out: dict = {}
    fasta_gz = gz(FASTA)
    out["fasta_url"] = server.add(
        "/gencode/release_44/GRCh38.primary_assembly.genome.fa.gz", fasta_gz, "application/x-gzip"
    )
    out["fasta_md5"], out["fasta_sha256"] = md5(fasta_gz), sha256(fasta_gz)
    peaks, signal = gz(NARROWPEAK), b"bigWig-bytes" * 100
    for acc, data, fmt, ext in (
        ("ENCFF000PKS", peaks, "bed", "bed.gz"),
        ("ENCFF000SIG", signal, "bigWig", "bigWig"),
    ):
        server.add(f"/files/{acc}/@@download/{acc}.{ext}", data, "application/octet-stream")
        server.add(
            f"/files/{acc}/?format=json",
            json.dumps(encode_metadata(acc, data, fmt, ext=ext)),
            "application/json",
        )
    out["encode"] = {
        "url_template": server.base + "/files/{accession}/@@download/{accession}.{extension}",
        "metadata_url_template": server.base + "/files/{accession}/?format=json",
        "verify": True,
    }
    out["peaks_acc"], out["signal_acc"], out["peaks_bytes"] = "ENCFF000PKS", "ENCFF000SIG", peaks
    out["nt_commit"] = server.add_hub_repo(
        "InstaDeepAI/nt_tasks_fixture",
        {"promoter_tata/train.fna": NT_TRAIN, "promoter_tata/test.fna": NT_TEST},
        kind="datasets",
    )
    out["nt_repo"] = "InstaDeepAI/nt_tasks_fixture"
    for lib in ("GO_Biological_Process_2023", "KEGG_2021_Human"):
        server.add(f"/Enrichr/geneSetLibrary?mode=text&libraryName={lib}", ENRICHR, "text/plain")
    out["enrichr_url"] = server.base + "/Enrichr/geneSetLibrary?mode=text&libraryName={library}"
    out["gmt_url"] = server.add("/msigdb/hallmark.gmt", GMT, "text/plain")
    out["trrust_url"] = server.add(
        "/trrust/data/trrust_rawdata.human.tsv", TRRUST, "text/tab-separated-values"
    )
    out["string_links_url"] = server.add(
        "/download/protein.links.v12.0/9606.protein.links.v12.0.txt.gz", gz(STRING_LINKS)
    )
    out["string_info_url"] = server.add(
        "/download/protein.info.v12.0/9606.protein.info.v12.0.txt.gz", gz(STRING_INFO)
    )
    out["h5ad_url"] = server.add("/ndownloader/files/35773219", H5AD)
    out["h5ad_sha256"] = sha256(H5AD)
    model_files = {
        "config.json": json.dumps({"model_type": "esm", "num_hidden_layers": 2}),
        "model.safetensors": b"\0" * 2048,
        "tokenizer.json": "{}",
        "README.md": "# tiny",
        "tf_model.h5": b"\1" * 64,
    }
    out["model_commit"] = server.add_hub_repo("org/tiny-dna-model", model_files)
    out["model_repo"] = "org/tiny-dna-model"
    scgpt = {
        "best_model.pt": b"\2" * 4096,
        "vocab.json": json.dumps({"<pad>": 0, "TP53": 1}),
        "args.json": json.dumps({"nlayers": 12, "embsize": 512}),
    }
    out["scgpt_files"] = [
        {
            "name": n,
            "url": server.add(f"/drive/{n}", d),
            "sha256": sha256(d.encode() if isinstance(d, str) else d),
        }
        for n, d in scgpt.items()
    ]
    return out

"""Downloads that never leave a half-written file under the final name.

:func:`fetch` streams a URL to a temporary file beside the destination, retries connection
errors, server errors and truncated transfers (resuming with an HTTP ``Range`` request when
the server allows it), checks the size and the checksums it was given, and only then moves
the file into place and records what it fetched in ``<dest>.sha256.json`` (url, sha256, md5,
size, date). Everything goes through the standard library's ``urllib`` (``http``, ``https``
and ``file`` URLs), so this module adds no dependency.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import http.client
import json
import logging
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from saeflow.utils import SaeflowError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
#: Transfers at least this large (or of unknown size) get a progress bar.
PROGRESS_MIN_BYTES = 8 << 20
USER_AGENT = "saeflow (+https://github.com/saeflow; python-urllib)"
#: HTTP statuses worth another attempt (the rest of 4xx are final).
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class _Retryable(Exception):
    """A failure another attempt may fix (connection, timeout, 5xx, truncation)."""


def checksum_record_path(dest: str | os.PathLike) -> Path:
    """Where :func:`fetch` records what it downloaded to ``dest``."""
    return Path(str(dest) + ".sha256.json")


def _backoff(attempt: int, base: float) -> float:
    return base * (2 ** (attempt - 1))


def _describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return f"connection failed ({e.reason})"
    return f"{type(e).__name__}: {e}"


def _progress(total: int | None, desc: str):
    """A tqdm bar for long transfers, else a no-op object with the same ``update``/``close``."""
    if total is not None and total < PROGRESS_MIN_BYTES:
        return _NoBar()
    from tqdm import tqdm

    # In a rule log (not a terminal) a bar redrawn 10 times a second would flood the file.
    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        leave=True,
        mininterval=0.5 if os.isatty(2) else 30.0,
    )


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _open(url: str, timeout: float, headers: dict[str, str]):
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers})
    return urllib.request.urlopen(req, timeout=timeout)


def _http_error(url: str, e: urllib.error.HTTPError) -> SaeflowError:
    hint = {
        401: "authentication required",
        403: "access denied",
        404: "not found: check the URL, accession or revision in the config",
        410: "gone: the file was withdrawn",
    }.get(e.code, e.reason or "HTTP error")
    return SaeflowError(f"download of {url} failed: HTTP {e.code} ({hint})")


def fetch(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 2.0,
    headers: dict[str, str] | None = None,
    reject_html: bool = True,
    record: bool = True,
    validate: Callable[[Path], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Download ``url`` to ``dest`` safely; return the checksum record.

    - The bytes go to a temporary file beside ``dest``; ``dest`` appears only after every check
      passed, so nothing half-written ever sits under the final name.
    - ``retries`` further attempts (``backoff``, ``2 * backoff``, ... seconds apart) follow a
      connection error, a timeout, an HTTP 408/429/5xx, or a truncated transfer (fewer bytes
      than the announced ``Content-Length``). A later attempt resumes where the previous one
      stopped when the server honours ``Range``; otherwise it starts over.
    - Any other HTTP error (404, 403, ...) fails at once: a :class:`SaeflowError` naming the URL
      and the status.
    - ``size``, ``sha256`` and ``md5`` (any of them optional) are checked at the end; a mismatch
      removes the temporary file and raises :class:`SaeflowError` with the expected and the
      actual value.
    - ``reject_html``: a ``text/html`` answer where a data file was expected (a login or
      "confirm download" page) is an error, unless ``dest`` itself ends in ``.html``.
    - ``validate(path)``, when given, inspects the complete temporary file before it is moved
      into place (e.g. the file signature) and raises :class:`SaeflowError` to refuse it.
    - With ``record``, ``<dest>.sha256.json`` receives {url, path, sha256, md5, size, date}.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    headers = dict(headers or {})
    sha256 = (sha256 or "").lower() or None
    md5 = (md5 or "").lower() or None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    attempts = retries + 1
    try:
        state = {"done": 0, "sha": hashlib.sha256(), "md5": hashlib.md5(), "total": None}
        last: BaseException | None = None
        for attempt in range(1, attempts + 1):
            try:
                _attempt(
                    url,
                    tmp,
                    state,
                    timeout,
                    headers,
                    reject_html and dest.suffix not in (".html", ".htm"),
                    dest.name,
                )
                last = None
                break
            except _Retryable as e:
                last = e
                if attempt < attempts:
                    wait = _backoff(attempt, backoff)
                    log.warning(
                        "download of %s: attempt %d/%d failed (%s); retrying in %.1f s",
                        url,
                        attempt,
                        attempts,
                        e,
                        wait,
                    )
                    sleep(wait)
        if last is not None:
            raise SaeflowError(f"download of {url} failed after {attempts} attempts: {last}")
        got = {
            "size": state["done"],
            "sha256": state["sha"].hexdigest(),
            "md5": state["md5"].hexdigest(),
        }
        for key, want in (("size", size), ("sha256", sha256), ("md5", md5)):
            if want is not None and want != "" and str(want).lower() != str(got[key]):
                raise SaeflowError(
                    f"download of {url}: {key} mismatch: expected {want}, got {got[key]} "
                    f"(nothing was written to {dest})"
                )
        if validate is not None:
            validate(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    rec = {
        "url": url,
        "path": dest.name,
        **got,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if record:
        write_record(dest, rec)
    log.info("downloaded %s -> %s (%d bytes, sha256 %s)", url, dest, got["size"], got["sha256"])
    return rec


def write_record(dest: str | os.PathLike, rec: dict[str, Any]) -> Path:
    """Write the checksum record of ``dest`` (atomically)."""
    path = checksum_record_path(dest)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def _attempt(
    url: str,
    tmp: Path,
    state: dict,
    timeout: float,
    headers: dict[str, str],
    reject_html: bool,
    label: str,
) -> None:
    """One transfer attempt: append to ``tmp`` from byte ``state['done']`` (or start over)."""
    h = dict(headers)
    if state["done"]:
        h["Range"] = f"bytes={state['done']}-"
    try:
        resp = _open(url, timeout, h)
    except urllib.error.HTTPError as e:
        if e.code == 416 and state["done"] and state["total"] == state["done"]:
            return  # everything had arrived; the server says there is nothing after it
        if e.code in RETRY_STATUS:
            raise _Retryable(f"HTTP {e.code}") from e
        raise _http_error(url, e) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Retryable(_describe(e)) from e
    with resp:
        status = getattr(resp, "status", None) or 200
        ctype = (resp.headers.get("Content-Type") or "").lower()
        if reject_html and ctype.startswith("text/html"):
            raise SaeflowError(
                f"download of {url}: the server sent an HTML page instead of the file (a login, "
                "consent or "
                f"'confirm download' page?); check the URL"
            )
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if state["done"] and status == 206:
            mode = "ab"
            total = state["done"] + length if length is not None else state["total"]
            log.info("resuming %s at byte %d", url, state["done"])
        else:
            if state["done"]:
                log.info("server ignored the Range request: restarting %s from the start", url)
            state.update(done=0, sha=hashlib.sha256(), md5=hashlib.md5())
            mode = "wb"
            total = length
        state["total"] = total
        bar = _progress(total, label)
        if state["done"]:
            bar.update(state["done"])
        try:
            with open(tmp, mode) as out:
                while True:
                    try:
                        block = resp.read(CHUNK)
                    except (
                        http.client.IncompleteRead,
                        OSError,
                        socket.timeout,
                        http.client.HTTPException,
                    ) as e:
                        raise _Retryable(
                            f"transfer interrupted after {state['done']} bytes ({_describe(e)})"
                        ) from e
                    if not block:
                        break
                    out.write(block)
                    state["sha"].update(block)
                    state["md5"].update(block)
                    state["done"] += len(block)
                    bar.update(len(block))
        finally:
            bar.close()
    if total is not None and state["done"] < total:
        raise _Retryable(f"truncated transfer: {state['done']} of {total} bytes")
    if total is not None and state["done"] > total:
        raise SaeflowError(
            f"download of {url}: received {state['done']} bytes, more than the announced {total}"
        )


def fetch_json(
    url: str,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """GET a small JSON document (metadata endpoints), with the retries of :func:`fetch`."""
    attempts = retries + 1
    last: BaseException | None = None
    for attempt in range(1, attempts + 1):
        try:
            with _open(url, timeout, {"Accept": "application/json"}) as resp:
                body = resp.read()
            try:
                return json.loads(body)
            except ValueError as e:
                raise SaeflowError(f"{url}: the answer is not JSON ({e}): {body[:200]!r}") from None
        except urllib.error.HTTPError as e:
            if e.code not in RETRY_STATUS:
                raise _http_error(url, e) from None
            last = e
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            last = e
        if attempt < attempts:
            wait = _backoff(attempt, backoff)
            log.warning(
                "request of %s: attempt %d/%d failed (%s); retrying in %.1f s",
                url,
                attempt,
                attempts,
                _describe(last),
                wait,
            )
            sleep(wait)
    raise SaeflowError(f"request of {url} failed after {attempts} attempts: {_describe(last)}")

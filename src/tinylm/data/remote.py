"""Downloading datasets over HTTP: resumable, checksummed, atomic; and reading remote files in ranges.

`download` writes into `<dest>.part` and renames it onto `dest` only once the size and sha256
check out, so `dest` exists only when complete; an interrupted download keeps the `.part` and
the next run resumes it with a Range request. All HTTP goes through a `Transport` (stdlib urllib
in `HttpTransport`), which tests swap for a local server or a fake with `set_transport`.
`RemoteFile` is a seekable file over range requests, so pyarrow can read single row groups of a
remote Parquet file without downloading all of it.
"""

from __future__ import annotations

import http.client
import io
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urljoin

from rich.progress import DownloadColumn, TransferSpeedColumn

from tinylm import __version__
from tinylm.console import console, progress, warn
from tinylm.errors import DownloadError
from tinylm.fileio import commit, sha256_file

CHUNK = 1 << 20
_NETWORK_ERRORS = (OSError, http.client.HTTPException)  # URLError, timeouts and resets are OSErrors
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class RemoteInfo:
    size: int | None  # Content-Length of the whole file
    sha256: str | None  # the published checksum (Hugging Face: X-Linked-Etag of an LFS file), else None
    accepts_ranges: bool  # the server answered Accept-Ranges: bytes


class RangeNotHonored(DownloadError):
    """The server answered a Range request with the whole file (200) or 416: start again from zero."""


class Transport(Protocol):
    def info(self, url: str) -> RemoteInfo: ...

    def open(self, url: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """Bytes [start, end) of `url`; DownloadError on failure, RangeNotHonored if a range was ignored."""
        ...


def _http_error(url: str, e: urllib.error.HTTPError) -> DownloadError:
    return DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        return None  # urllib then raises HTTPError, whose headers info() reads


class HttpTransport:
    """urllib with a tinylm User-Agent; `info` walks redirects itself to see headers on every hop."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.headers = {"User-Agent": f"tinylm/{__version__}"}
        self._no_redirect = urllib.request.build_opener(_NoRedirect)

    def info(self, url: str) -> RemoteInfo:
        # Hugging Face puts X-Linked-Size/X-Linked-Etag on the first (redirect) response only.
        linked_size = linked_etag = None
        for _ in range(10):
            try:
                response = self._no_redirect.open(urllib.request.Request(url, headers=self.headers, method="HEAD"),
                                                  timeout=self.timeout)
            except urllib.error.HTTPError as e:
                headers = e.headers
                e.close()
                linked_size = linked_size or headers.get("X-Linked-Size")
                linked_etag = linked_etag or headers.get("X-Linked-Etag")
                if e.code in (301, 302, 303, 307, 308) and headers.get("Location"):
                    url = urljoin(url, headers["Location"])
                    continue
                raise _http_error(url, e) from None
            except _NETWORK_ERRORS as e:
                raise DownloadError(f"cannot reach {url}: {getattr(e, 'reason', e)}") from None
            with response:
                headers = response.headers
            size = linked_size or headers.get("X-Linked-Size") or headers.get("Content-Length")
            etag = (linked_etag or headers.get("X-Linked-Etag") or "").removeprefix("W/").strip('"').lower()
            return RemoteInfo(size=int(size) if size and size.isdigit() else None,
                              sha256=etag if _SHA256.fullmatch(etag) else None,
                              accepts_ranges=headers.get("Accept-Ranges", "").lower() == "bytes")
        raise DownloadError(f"cannot download {url}: more than 10 redirects")

    def open(self, url: str, start: int = 0, end: int | None = None) -> BinaryIO:
        if end is not None and end <= start:
            return io.BytesIO()
        headers = dict(self.headers)
        ranged = start > 0 or end is not None
        if ranged:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=self.timeout)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 416:
                raise RangeNotHonored(f"{url}: HTTP 416 for bytes {start}-") from None
            raise _http_error(url, e) from None
        except _NETWORK_ERRORS as e:
            raise DownloadError(f"cannot reach {url}: {getattr(e, 'reason', e)}") from None
        if ranged and start > 0 and not (response.status == 206 and
                                         response.headers.get("Content-Range", "").startswith(f"bytes {start}-")):
            response.close()
            raise RangeNotHonored(f"{url}: the server ignored the Range header (HTTP {response.status})")
        return response


_transport: Transport = HttpTransport()


def get_transport() -> Transport:
    return _transport


def set_transport(t: Transport | None) -> None:
    """Replace the default transport (tests, mirrors); None restores `HttpTransport`."""
    global _transport
    _transport = t if t is not None else HttpTransport()


def _mb(n: int | None) -> str:
    return "size unknown" if n is None else f"{n / 1e6:.1f} MB"


def download(url: str, dest: Path, *, sha256: str | None = None, size: int | None = None,
             transport: Transport | None = None, description: str = "") -> Path:
    """Download `url` to `dest` (resuming `<dest>.part`), verify size and sha256, and return `dest`."""
    dest = Path(dest)
    transport = transport or get_transport()
    if dest.exists():
        if sha256 is None or sha256_file(dest) == sha256.lower():
            return dest
        warn(f"{dest} does not match its sha256 {sha256}; downloading it again")
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    info = transport.info(url)
    expected_sha = (sha256 or info.sha256 or "").lower() or None
    total = size if size is not None else info.size
    start = part.stat().st_size if part.exists() else 0
    if not info.accepts_ranges or (total is not None and start > total):
        start = 0
    if total is None or start < total:
        start = _fetch(transport, url, part, start, total, description or dest.name, dest)
    got = part.stat().st_size
    if total is not None and got < total:
        raise DownloadError(f"the download of {url} stopped at {_mb(got)} of {_mb(total)}; the partial file {part} "
                            "is kept and running the command again resumes it")
    if total is not None and got != total:
        part.unlink()
        raise DownloadError(f"{url}: got {got} bytes, expected {total}; the partial download was deleted, "
                            "run the command again")
    if expected_sha is not None and (actual := sha256_file(part)) != expected_sha:
        part.unlink()
        raise DownloadError(f"{url}: sha256 mismatch (expected {expected_sha}, got {actual}); the partial download "
                            "was deleted, run the command again")
    commit(part, dest)
    return dest


def _fetch(transport: Transport, url: str, part: Path, start: int, total: int | None, description: str,
           dest: Path) -> int:
    """Append bytes from `start` to `part` (from zero if the server ignores ranges); return the start used."""
    def interrupted(e: BaseException) -> DownloadError:
        return DownloadError(f"the download of {url} was interrupted ({e}); the partial file {part} is kept and "
                             "running the command again resumes it")

    try:
        try:
            stream = transport.open(url, start)
        except RangeNotHonored:
            start, stream = 0, transport.open(url, 0)
    except _NETWORK_ERRORS as e:
        raise interrupted(e) from None
    resuming = f", resuming at {_mb(start)}" if start else ""
    if not console.is_terminal:
        console.print(f"downloading {url} ({_mb(total)}{resuming}) -> {dest}")
    with stream, open(part, "ab" if start else "wb") as f, \
            progress(DownloadColumn(), TransferSpeedColumn(), counts=False) as bar:
        task = bar.add_task(description, total=total, completed=start)
        while True:
            try:
                block = stream.read(CHUNK)
            except _NETWORK_ERRORS as e:
                raise interrupted(e) from None
            if not block:
                break
            f.write(block)
            bar.advance(task, len(block))
        f.flush()
        os.fsync(f.fileno())
    return start


class RemoteFile(io.RawIOBase):
    """A read-only, seekable file over HTTP range requests: one request per `readinto`."""

    def __init__(self, url: str, transport: Transport | None = None, size: int | None = None) -> None:
        super().__init__()
        self.url = url
        self.transport = transport or get_transport()
        self.size = size if size is not None else self.transport.info(url).size
        if self.size is None:
            raise DownloadError(f"{url}: the server does not report the file size, so it cannot be read in ranges")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, b) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("I/O operation on closed file")
        n = min(len(b), self.size - self._pos)
        if n <= 0:
            return 0
        view, got = memoryview(b).cast("B"), 0
        stream = self.transport.open(self.url, self._pos, self._pos + n)
        try:
            while got < n and (block := stream.read(n - got)):
                view[got:got + len(block)] = block
                got += len(block)
        except _NETWORK_ERRORS as e:
            raise DownloadError(f"reading {self.url} at byte {self._pos} failed: {e}") from None
        finally:
            stream.close()
        if got < n:
            raise DownloadError(f"{self.url}: got {got} of {n} bytes at offset {self._pos}")
        self._pos += n
        return n

    def readall(self) -> bytes:
        out = bytearray(max(self.size - self._pos, 0))
        return bytes(out[:self.readinto(out)])


def open_remote(url: str, transport: Transport | None = None, buffer_size: int = 1 << 22) -> io.BufferedReader:
    """A buffered, seekable reader of `url` (e.g. for `pyarrow.parquet.ParquetFile`)."""
    return io.BufferedReader(RemoteFile(url, transport), buffer_size=buffer_size)

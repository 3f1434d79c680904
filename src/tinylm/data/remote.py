"""Downloading the files that are not on the Hugging Face Hub, by plain URL: resumable, checksummed, atomic.

    URL ─► Transport.info (size, ranges?) ─► Transport.open(start) ─► <dest>.part ─► size + sha256 ─► dest

Three files need this: tinyshakespeare's `input.txt` (GitHub), WikiText-103's raw zip
(wikitext.smerity.com) and the HellaSwag validation file (GitHub). Everything in a Hub repository
goes through `huggingface_hub` instead (catalog.py, hub.py), which brings the Hub cache, tokens,
mirrors and offline mode.

`download` writes into `<dest>.part` and renames it onto `dest` only once the size and the pinned
sha256 check out, so `dest` exists only when complete; an interrupted download keeps the `.part`
and the next run resumes it with a Range request. All HTTP goes through a `Transport` (stdlib
urllib in `HttpTransport`), which tests swap for a fake with `set_transport` or run against a
local HTTP server.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from rich.progress import DownloadColumn, TransferSpeedColumn

from tinylm import fileio
from tinylm.version import __version__
from tinylm.console import console, progress, warn
from tinylm.errors import DownloadError
from tinylm.fileio import commit, sha256_file

CHUNK = 1 << 20
_NETWORK_ERRORS = (OSError, http.client.HTTPException)  # URLError, timeouts and resets are OSErrors


@dataclass
class RemoteInfo:
    size: int | None  # Content-Length of the whole file
    accepts_ranges: bool  # the server answered Accept-Ranges: bytes


class RangeNotHonored(DownloadError):
    """The server answered a Range request with the whole file (200) or 416: start again from zero."""


class Transport(Protocol):
    def info(self, url: str) -> RemoteInfo: ...

    def open(self, url: str, start: int = 0) -> BinaryIO:
        """The bytes of `url` from `start`; DownloadError on failure, RangeNotHonored if the range was ignored."""
        ...


def _http_error(url: str, e: urllib.error.HTTPError) -> DownloadError:
    return DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}")


class HttpTransport:
    """urllib with a tinylm User-Agent (redirects are followed)."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.headers = {"User-Agent": f"tinylm/{__version__}"}

    def _request(self, url: str, headers: dict[str, str], method: str = "GET"):
        try:
            return urllib.request.urlopen(urllib.request.Request(url, headers=headers, method=method),
                                          timeout=self.timeout)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 416:
                raise RangeNotHonored(f"{url}: HTTP 416 for the range asked") from None
            raise _http_error(url, e) from None
        except _NETWORK_ERRORS as e:
            raise DownloadError(f"cannot reach {url}: {getattr(e, 'reason', e)}") from None

    def info(self, url: str) -> RemoteInfo:
        with self._request(url, self.headers, "HEAD") as response:
            size = response.headers.get("Content-Length")
            return RemoteInfo(size=int(size) if size and size.isdigit() else None,
                              accepts_ranges=response.headers.get("Accept-Ranges", "").lower() == "bytes")

    def open(self, url: str, start: int = 0) -> BinaryIO:
        headers = {**self.headers, **({"Range": f"bytes={start}-"} if start else {})}
        response = self._request(url, headers)
        if start and not (response.status == 206 and
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
    total = size if size is not None else info.size
    start = part.stat().st_size if part.exists() else 0
    if not info.accepts_ranges or (total is not None and start > total):
        start = 0
    if total is None or start < total:
        _fetch(transport, url, part, start, total, description or dest.name, dest)
    got = part.stat().st_size
    if total is not None and got < total:
        raise DownloadError(f"the download of {url} stopped at {_mb(got)} of {_mb(total)}; the partial file {part} "
                            "is kept and running the command again resumes it")
    if total is not None and got != total:
        part.unlink()
        raise DownloadError(f"{url}: got {got} bytes, expected {total}; the partial download was deleted, "
                            "run the command again")
    if sha256 is not None and (actual := sha256_file(part)) != sha256.lower():
        part.unlink()
        raise DownloadError(f"{url}: sha256 mismatch (expected {sha256}, got {actual}); the partial download "
                            "was deleted, run the command again")
    commit(part, dest)
    return dest


def _fetch(transport: Transport, url: str, part: Path, start: int, total: int | None, description: str,
           dest: Path) -> None:
    """Append bytes from `start` to `part` (from zero if the server ignores ranges)."""
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
    with stream, fileio.open_writer(part, "ab" if start else "wb") as f, \
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
        f.sync()


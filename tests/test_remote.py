"""Plain-URL downloads (files not on the Hugging Face Hub) against a local HTTP server (no internet needed)
and a fake transport: resuming, servers that ignore ranges, pinned checksums, redirects, errors."""

from __future__ import annotations

import hashlib
import io
import random
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from tinylm.data import remote
from tinylm.data.remote import HttpTransport, RemoteInfo, download, get_transport, set_transport
from tinylm.errors import DataError, DownloadError


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def do_GET(self) -> None:
        self._respond(body=True)

    def _respond(self, body: bool) -> None:
        srv = self.server
        with srv.lock:
            srv.requests.append((self.command, self.path, dict(self.headers)))
        name = self.path.lstrip("/")
        if name.startswith("redirect/"):  # like GitHub's raw files moving: a 302 to the new place
            self.send_response(302)
            self.send_header("Location", f"/{name.removeprefix('redirect/')}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = srv.root / name
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        start, end = 0, len(data)
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match and not srv.ignore_range:
            start = int(match[1])
            end = min(int(match[2]) + 1, len(data)) if match[2] else len(data)
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if body:
            chunk = data[start:end] if srv.cut_after is None else data[start:min(end, start + srv.cut_after)]
            self.wfile.write(chunk)
            with srv.lock:
                srv.bytes_sent += len(chunk)
        self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.root = root
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.ignore_range = False
        self.cut_after: int | None = None  # close the connection after this many body bytes
        self.bytes_sent = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"

    def gets(self) -> list[dict[str, str]]:
        return [headers for method, _, headers in self.requests if method == "GET"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "served"
    root.mkdir()
    srv = Server(root)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def blob(server: Server) -> bytes:
    data = random.Random(0).randbytes(1_000_000)
    (server.root / "blob.bin").write_bytes(data)
    return data


def test_download_is_identical_and_cached(server: Server, blob: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "blob.bin"
    assert download(server.url("blob.bin"), dest) == dest
    assert dest.read_bytes() == blob
    assert not dest.with_name("blob.bin.part").exists()
    assert all(h["User-Agent"].startswith("tinylm/") for _, _, h in server.requests)
    before = len(server.requests)
    download(server.url("blob.bin"), dest)
    assert len(server.requests) == before


def test_interrupted_download_resumes(server: Server, blob: bytes, tmp_path: Path) -> None:
    dest, part = tmp_path / "blob.bin", tmp_path / "blob.bin.part"
    server.cut_after = 300_000
    with pytest.raises(DownloadError, match="kept"):
        download(server.url("blob.bin"), dest)
    assert not dest.exists() and part.stat().st_size == 300_000
    server.cut_after = None
    download(server.url("blob.bin"), dest)
    assert server.gets()[-1]["Range"] == "bytes=300000-"
    assert dest.read_bytes() == blob and not part.exists()


def test_server_ignoring_range_restarts(server: Server, blob: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    server.cut_after = 300_000
    with pytest.raises(DownloadError):
        download(server.url("blob.bin"), dest)
    server.cut_after, server.ignore_range = None, True
    download(server.url("blob.bin"), dest)
    assert "Range" in server.gets()[-2] and "Range" not in server.gets()[-1]
    assert dest.read_bytes() == blob


def test_pinned_checksums(server: Server, blob: bytes, tmp_path: Path) -> None:
    dest, part = tmp_path / "blob.bin", tmp_path / "blob.bin.part"
    good = hashlib.sha256(blob).hexdigest()
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download(server.url("blob.bin"), dest, sha256="f" * 64)
    assert not dest.exists() and not part.exists()
    assert get_transport().info(server.url("blob.bin")) == RemoteInfo(len(blob), True)
    assert download(server.url("blob.bin"), dest, sha256=good).read_bytes() == blob
    dest.write_bytes(b"corrupt")  # a pinned checksum is checked on the existing file too
    with pytest.warns(UserWarning, match="sha256"):
        download(server.url("blob.bin"), dest, sha256=good)
    assert dest.read_bytes() == blob


def test_redirects_are_followed(server: Server, blob: bytes, tmp_path: Path) -> None:
    assert HttpTransport().info(server.url("redirect/blob.bin")) == RemoteInfo(len(blob), True)
    assert download(server.url("redirect/blob.bin"), tmp_path / "b.bin").read_bytes() == blob


def test_404_names_url_and_status(server: Server, tmp_path: Path) -> None:
    url = server.url("missing.bin")
    with pytest.raises(DownloadError) as excinfo:
        download(url, tmp_path / "missing.bin")
    assert url in str(excinfo.value) and "404" in str(excinfo.value)
    assert isinstance(excinfo.value, DataError) and "\n" not in str(excinfo.value)


class FakeTransport:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def info(self, url: str) -> RemoteInfo:
        return RemoteInfo(len(self.files[url]), True)

    def open(self, url: str, start: int = 0) -> io.BytesIO:
        return io.BytesIO(self.files[url][start:])


def test_set_transport_swaps_default(tmp_path: Path, no_network: None) -> None:
    fake = FakeTransport({"fake://a": b"hello" * 1000})
    set_transport(fake)
    try:
        assert get_transport() is fake
        assert download("fake://a", tmp_path / "a").read_bytes() == b"hello" * 1000
    finally:
        set_transport(None)
    assert isinstance(get_transport(), HttpTransport) and remote.get_transport() is get_transport()

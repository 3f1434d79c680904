"""A small local fake of the Hugging Face Hub's HTTP endpoints, for tests and benchmarks.

It serves dataset repositories from folders on disk to the real `huggingface_hub` and `datasets`
clients (point them at it with `HF_ENDPOINT`). The endpoints are the ones those libraries call,
found by logging their requests:

    GET  /api/datasets/OWNER/NAME[/revision/REV]           repository info (sha, siblings, cardData)
    GET  /api/datasets/OWNER/NAME/tree/REV[/PATH]          folder listing (?recursive=, paginated by Link)
    POST /api/datasets/OWNER/NAME/paths-info/REV           info of the given paths (form field `paths`)
    HEAD/GET /datasets/OWNER/NAME/resolve/REV/PATH         a file: ETag, X-Repo-Commit, Range (206)
    HEAD/GET /cdn/SHA256 (on host `localhost`)             LFS files, after the resolve URL's 302

Like the Hub, LFS files (here: Parquet) answer `resolve` with a 302 to a "CDN" URL carrying
X-Linked-Etag (their sha256) and X-Linked-Size; other files are served directly with their git
blob id as ETag. A gated repository answers file requests without `Authorization: Bearer TOKEN`
with 401 and `X-Error-Code: GatedRepo`; unknown repositories, revisions and files get 404 with
the Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound). Every request is
logged, and the file bytes sent are counted (`bytes_sent`), so tests can assert how much a
streaming reader fetched.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".parquet", ".arrow", ".zip", ".gz", ".txt")
PUBLIC_FILES = ("README.md", ".gitattributes")
PAGE = 50  # tree entries per page (the Hub pages long listings through a Link header)

# a sitecustomize module for the Hub clients' subprocesses: connections that leave this machine fail
GUARD = '''
import socket

_LOCAL = {"127.0.0.1", "localhost", "::1", None}
_getaddrinfo, _connect = socket.getaddrinfo, socket.socket.connect


def _refuse(host):
    raise OSError(f"tests may not reach the network (tried {host})")


def getaddrinfo(host, *args, **kwargs):
    return _getaddrinfo(host, *args, **kwargs) if host in _LOCAL else _refuse(host)


def connect(self, address):
    host = address[0] if isinstance(address, tuple) else None
    return _connect(self, address) if host in _LOCAL or self.family == socket.AF_UNIX else _refuse(host)


socket.getaddrinfo, socket.socket.connect = getaddrinfo, connect

import os, sys

if os.environ.get("HIDE_DATASETS"):  # as if the `datasets` library were not installed
    sys.modules["datasets"] = None
'''


@dataclass
class Repo:
    root: Path  # the repository's files
    sha: str  # the commit every revision name resolves to
    gated: bool = False
    token: str = "hf_test_token"  # the token that opens a gated repository
    revisions: tuple[str, ...] = ("main",)

    def files(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def entry(self, path: str) -> dict:
        p = self.root / path
        if p.is_dir():
            return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}
        data = p.read_bytes()
        entry = {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": path}
        if path.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Log:
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Range header)
    bytes_sent: int = 0  # file bytes (GET bodies of resolve and cdn URLs)
    bytes_by_file: dict[str, int] = field(default_factory=dict)  # the same, by path in the repository

    def files_fetched(self, hub: FakeHub) -> set[str]:
        """Paths of the repository files whose bytes were requested (through resolve or the CDN)."""
        names = {f"/cdn/{sha}": path for sha, path in hub.blob_paths.items()}
        out = set()
        for method, path, _ in self.requests:
            if method == "GET" and "/resolve/" in path:
                out.add(path.split("/resolve/", 1)[1].split("/", 1)[1])
            elif method == "GET" and path in names:
                out.add(names[path])
        return out


class Handler(BaseHTTPRequestHandler):
    server: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    # ------------------------------------------------------------------ plumbing

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(status, body, {"X-Error-Code": code, "X-Error-Message": message})

    def _json(self, obj: object, headers: dict[str, str] | None = None) -> None:
        self._send(200, json.dumps(obj).encode(), headers)

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.server.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
        return repo

    def _revision(self, repo: Repo, revision: str) -> bool:
        if revision in repo.revisions or revision == repo.sha:
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return False

    def _authorized(self, repo: Repo) -> bool:
        if not repo.gated or self.headers.get("Authorization") == f"Bearer {repo.token}":
            return True
        self._error(401, "GatedRepo", "Access to this dataset is restricted. You must be authenticated to access it.")
        return False

    def _body_form(self) -> dict[str, list[str]]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        if self.headers.get("Content-Type", "").startswith("application/json"):
            data = json.loads(raw or "{}")
            return {k: v if isinstance(v, list) else [v] for k, v in data.items()}
        return parse_qs(raw)

    # ------------------------------------------------------------------ verbs

    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def _route(self) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        with self.server.lock:
            self.server.log.requests.append((self.command, unquote(url.path), self.headers.get("Range", "")))
        if m := re.fullmatch(r"/cdn/([0-9a-f]{64})", path):
            return self._file_bytes(self.server.blobs.get(m[1]), {}, self.server.blob_paths.get(m[1], ""))
        if m := re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._resolve(*m.groups())
        if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/paths-info/([^/]+)", path):
            return self._paths_info(m[1], m[2])
        if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path):
            return self._tree(m[1], m[2], m[3] or "", query)
        if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/revision/(.+))?", path):
            return self._info(m[1], m[2] or "main")
        self._error(404, "EntryNotFound", f"no such endpoint in the fake hub: {self.command} {path}")

    def _info(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id)
        if repo is None or not self._revision(repo, revision):
            return
        self._json({"_id": "fake", "id": repo_id, "author": repo_id.split("/")[0], "sha": repo.sha,
                    "private": False, "gated": "auto" if repo.gated else False, "disabled": False,
                    "lastModified": "2024-01-01T00:00:00.000Z", "tags": [], "downloads": 0, "likes": 0,
                    "siblings": [{"rfilename": f} for f in repo.files()]})

    def _tree(self, repo_id: str, revision: str, folder: str, query: dict[str, list[str]]) -> None:
        repo = self._repo(repo_id)
        if repo is None or not self._revision(repo, revision):
            return
        base = repo.root / folder
        if not base.is_dir():
            return self._error(404, "EntryNotFound", f"{folder} does not exist on {revision}")
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        children = sorted(base.rglob("*") if recursive else base.iterdir())
        entries = [repo.entry(p.relative_to(repo.root).as_posix()) for p in children]
        start = int(query.get("cursor", ["0"])[0])
        headers = {}
        if start + PAGE < len(entries):
            query = f"recursive={str(recursive).lower()}&cursor={start + PAGE}"
            headers["Link"] = f'<{self.server.url}{urlsplit(self.path).path}?{query}>; rel="next"'
        self._json(entries[start:start + PAGE], headers)

    def _paths_info(self, repo_id: str, revision: str) -> None:
        form = self._body_form()
        repo = self._repo(repo_id)
        if repo is None or not self._revision(repo, revision):
            return
        self._json([repo.entry(p.strip("/")) for p in form.get("paths", []) if (repo.root / p.strip("/")).exists()])

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        repo = self._repo(repo_id)
        if repo is None or not self._revision(repo, revision):
            return
        if path not in PUBLIC_FILES and not self._authorized(repo):  # like the Hub: a gated repo's card is public
            return
        file = repo.root / path
        if not file.is_file():
            return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}")
        data = file.read_bytes()
        headers = {"X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes"}
        if path.endswith(LFS_SUFFIXES):  # the Hub redirects LFS files to its CDN
            sha256 = hashlib.sha256(data).hexdigest()
            with self.server.lock:
                self.server.blobs[sha256] = file
                self.server.blob_paths[sha256] = path
            headers.update({"Location": f"{self.server.cdn_url}/cdn/{sha256}", "X-Linked-Etag": f'"{sha256}"',
                            "X-Linked-Size": str(len(data)), "ETag": f'"{git_blob_id(data)}"'})
            return self._send(302, b"", headers)
        headers["ETag"] = f'"{git_blob_id(data)}"'
        self._file_bytes(file, headers, path)

    def _file_bytes(self, file: Path | None, headers: dict[str, str], name: str) -> None:
        if file is None or not file.is_file():
            return self._error(404, "EntryNotFound", "no such file")
        size = file.stat().st_size
        start, end, status = 0, size, 200
        if m := re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "")):
            if m[1]:
                start, end = int(m[1]), min(int(m[2]) + 1, size) if m[2] else size
            else:  # a suffix range: the last N bytes
                start = max(size - int(m[2]), 0)
            if start >= size:
                return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{size}"}
        with open(file, "rb") as f:
            f.seek(start)
            body = f.read(end - start)
        self._send(status, body, {**headers, "Accept-Ranges": "bytes"}, content_type="application/octet-stream")
        if self.command == "GET":
            with self.server.lock:
                self.server.log.bytes_sent += len(body)
                self.server.log.bytes_by_file[name] = self.server.log.bytes_by_file.get(name, 0) + len(body)


class FakeHub(ThreadingHTTPServer):
    """`with FakeHub() as hub: hub.add("owner/name", folder)`; `hub.url` goes into HF_ENDPOINT."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, Path] = {}
        self.blob_paths: dict[str, str] = {}  # sha256 -> the path in its repository
        self.lock = threading.Lock()
        self.log = Log()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        # LFS redirects go to another host name, as the Hub's go to its CDN (clients treat them differently)
        self.cdn_url = f"http://localhost:{self.server_address[1]}"
        self._thread: threading.Thread | None = None

    def add(self, repo_id: str, root: Path, *, gated: bool = False, sha: str = "") -> Repo:
        sha = sha or hashlib.sha1(repo_id.encode() + b"@1").hexdigest()
        self.repos[repo_id] = Repo(Path(root), sha, gated)
        return self.repos[repo_id]

    def reset_log(self) -> None:
        with self.lock:
            self.log = Log()

    def __enter__(self) -> FakeHub:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

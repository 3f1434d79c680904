"""Atomic writes, hashing, recorded paths, and where tinylm caches files.

Every file tinylm writes goes through `atomic_write`: the bytes land in a temporary file in the
same directory, are flushed to disk, and only then replace the destination with `os.replace`,
so a crash or SIGKILL leaves either the old file or the new one, never a torn one.
Every path a run, a data directory or an export records is `absolute`, so it names the same file
whatever the working directory of the command that reads it later. `exclusive` is the lock that keeps
one training per run directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, BinaryIO, Iterator


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_path(path: Path) -> Path:
    """The temporary name `atomic_write` uses for `path` (a crash may leave it behind)."""
    return path.with_name(f".{path.name}.tmp")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, replace: bool = True) -> Iterator[BinaryIO]:
    """Open a temporary file for writing; on success it becomes `path` atomically.

    With `replace=False` the finished temporary file is left in place (its path is
    `temp_path(path)`) so the caller can commit several files in a chosen order. Concurrent writers
    of one path are safe: the last rename wins, and each commits a whole file of its own.
    """
    path = Path(path)
    # a name of its own when this call commits: processes (or threads) writing the same file at once,
    # e.g. two tokenizer workers filling a shared cache, then never rename each other's temporary file
    tmp = temp_path(path) if not replace else path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if replace:
        commit(tmp, path)


def commit(tmp: Path, path: Path) -> None:
    """Rename a finished temporary file onto its destination and make the rename durable."""
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Busy(Exception):
    """Another process holds the lock `exclusive` was asked for."""


@contextlib.contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock (flock) on an existing file or directory, held for a `with` block: a
    process that asks for it while another holds it gets `Busy` at once (never waits). The lock goes with
    the open descriptor, so it is released when the block ends or the process dies (SIGKILL included).
    A no-op where flock does not exist (Windows) or the file system refuses it (some network ones)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows)
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(str(path)) from None
        except OSError:  # a file system without flock: no lock, as on Windows
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def absolute(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """`path` (with `~` expanded) as an absolute, normalised path; a relative one is taken from
    `base` (default: the working directory). Symbolic links are kept as they are named."""
    path = os.path.expanduser(os.fspath(path))
    return os.path.normpath(os.path.join(os.fspath(base) if base is not None else os.getcwd(), path))


def cache_root() -> Path:
    """`$TINYLM_CACHE`, else `$XDG_CACHE_HOME/tinylm`, else `~/.cache/tinylm` (absolute: the prepared
    directories' paths that runs and evaluations record hold from any working directory)."""
    if os.environ.get("TINYLM_CACHE"):
        return Path(absolute(os.environ["TINYLM_CACHE"]))
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(absolute(Path(base) / "tinylm"))

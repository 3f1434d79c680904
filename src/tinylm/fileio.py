"""Atomic writes, failed writes as one-line errors, hashing, recorded paths, and where tinylm caches files.

Every file tinylm writes goes through `atomic_write`: the bytes land in a temporary file in the
same directory, are flushed to disk, and only then replace the destination with `os.replace`,
so a crash or SIGKILL leaves either the old file or the new one, never a torn one.

    OSError while writing PATH (atomic_write, or `with writing(PATH):` around any other writer)
        ──► write_failure(e, PATH) ──► WriteError "PATH: problem; fix, then run the command again"
            ENOSPC / EDQUOT (free space shown), EFBIG (the `ulimit -f` limit), EACCES / EPERM, EROFS,
            ENOENT, EISDIR, ENOTDIR, ENAMETOOLONG, EIO, and numpy's short writes without an errno
            ("16384 requested and 11960 written": the disk's free space or the file-size limit says which)
    any other OSError that reaches the CLI ──► describe(e): "FILE: problem; fix"

The temporary file of a failed write is removed, so following the fix and running the same command
again works (commands leave no half-made output behind that would refuse the next run).

Every path a run, a data directory or an export records is `absolute`, so it names the same file
whatever the working directory of the command that reads it later. `exclusive` is the lock that keeps
one training per run directory.
"""

from __future__ import annotations

import contextlib
import errno as errnos
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from tinylm.errors import WriteError

AGAIN = "run the command again"


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


# --------------------------------------------------------------------------- failed writes


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return ""  # pragma: no cover


def free_space(path: str | os.PathLike) -> int | None:
    """Bytes free on the filesystem holding `path` (or its nearest existing folder), None if unknown."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _file_size_limit() -> int | None:
    """This process's file-size limit (`ulimit -f`, RLIMIT_FSIZE) in bytes, None when unlimited."""
    try:
        import resource  # POSIX only
    except ImportError:  # pragma: no cover
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def _short_write(e: OSError) -> bool:
    """numpy's `tofile` (and so GGUF's writer) reports a short write as "N requested and M written",
    an OSError without an errno."""
    return e.errno is None and "requested and" in str(e) and "written" in str(e)


_DISK_FULL = "free some space there, or write to another disk"


def diagnose(e: OSError, path: str | os.PathLike) -> tuple[str, str]:
    """(what went wrong, a fix that works) for OSError `e` on `path`."""
    code = e.errno
    if _short_write(e):  # no errno: the free space or the file-size limit tells what stopped it
        free, limit = free_space(path), _file_size_limit()
        if limit is not None and (free is None or free > 1 << 20):
            code = errnos.EFBIG
        elif free is not None and free <= 1 << 20:
            code = errnos.ENOSPC
        else:
            return f"a write stopped short ({e})", "check that its disk has free space and works"
    if code == errnos.ENOSPC:
        free = free_space(path)
        return "no space left on its device" + (f" ({_size(free)} free)" if free is not None else ""), _DISK_FULL
    if code == getattr(errnos, "EDQUOT", -1):
        return "the disk quota is used up", "free some space within it, or write to another disk"
    if code == errnos.EFBIG:
        limit = _file_size_limit()
        where = f"this process's file-size limit, ulimit -f, of {_size(limit)}" if limit is not None else \
            "the largest file its filesystem takes"
        return (f"the file would grow past {where}",
                "raise the limit (ulimit -f unlimited)" if limit is not None else "write to another filesystem")
    if code in (errnos.EACCES, errnos.EPERM):
        return "permission denied", "write to a folder you may write to, or change this one's permissions"
    if code == errnos.EROFS:
        return "its filesystem is read-only", "write to a writable disk"
    if code == errnos.ENOENT:
        return "its folder does not exist", "create the folder or give another path"
    if code == errnos.EISDIR:
        return "it is a folder", "give a file's path"
    if code == errnos.ENOTDIR:
        return "a part of its path is a file, not a folder", "give another path"
    if code == errnos.ENAMETOOLONG:
        return "the name is too long for its filesystem", "give a shorter path"
    if code == errnos.EIO:
        return "an input/output error (a failing disk, a removed drive or a lost network filesystem)", \
            "check the device"
    return (e.strerror or str(e) or type(e).__name__), "check the path and its disk"


def write_failure(e: OSError, path: str | os.PathLike) -> WriteError:
    """The WriteError for OSError `e` raised while writing `path`: the path, what went wrong and the fix
    (for a file in tinylm's cache, moving the cache: $TINYLM_CACHE)."""
    problem, fix = diagnose(e, path)
    if fix == _DISK_FULL and Path(path).absolute().is_relative_to(cache_root().absolute()):
        fix = f"free some space there, or move tinylm's cache to another disk (TINYLM_CACHE=DIR; now {cache_root()})"
    return WriteError.of(path, problem, fix, AGAIN, e.errno)


def describe(e: OSError) -> str:
    """One line for any OSError (the CLI's last resort): the file it names, what went wrong, a fix."""
    if isinstance(e, WriteError):
        return str(e)
    path = e.filename if e.filename is not None else "a file"
    if e.filename2 is not None:
        path = f"{e.filename} -> {e.filename2}"
    problem, fix = diagnose(e, e.filename if e.filename is not None else ".")
    if e.errno == errnos.ENOENT and e.filename is not None:
        problem, fix = "no such file or folder", "check the path"
    elif e.errno in (errnos.EACCES, errnos.EPERM):
        fix = "give a path you may use, or change its permissions"
    return f"{path}: {problem}; {fix}, then {AGAIN}"


_WRITE_ERRNOS = {errnos.ENOSPC, errnos.EFBIG, errnos.EROFS, getattr(errnos, "EDQUOT", errnos.ENOSPC)}


@contextlib.contextmanager
def writing(path: str | os.PathLike, *temporary: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError of writing `path` (or its `temporary` files) into a one-line WriteError naming
    `path`, what went wrong and a fix. An OSError about another file passes through unchanged."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        ours = {os.fspath(path), *map(os.fspath, temporary)}
        if e.errno in _WRITE_ERRNOS or _short_write(e) or e.filename is None or os.fspath(e.filename) in ours:
            raise write_failure(e, path) from e
        raise


class CheckedFile:
    """A binary file open for writing whose failures are WriteErrors naming `name` (`open_writer`)."""

    def __init__(self, path: Path, mode: str, name: str | os.PathLike):
        self.path, self.name = path, name
        with writing(name, path):
            self.file = open(path, mode)  # noqa: SIM115 - held open by this wrapper

    def write(self, data: bytes) -> int:
        with writing(self.name, self.path):
            return self.file.write(data)

    def flush(self) -> None:
        with writing(self.name, self.path):
            self.file.flush()

    def sync(self) -> None:
        """Flush and fsync: the bytes are on disk (or the failure is a WriteError)."""
        with writing(self.name, self.path):
            self.file.flush()
            os.fsync(self.file.fileno())

    def fileno(self) -> int:
        return self.file.fileno()

    def close(self) -> None:
        """Close (flushing what is buffered: that write may fail too)."""
        with writing(self.name, self.path):
            self.file.close()

    def __enter__(self) -> CheckedFile:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is None:
            self.close()
        else:  # already failing: the first error is the one to report
            with contextlib.suppress(OSError):
                self.file.close()


def open_writer(path: str | os.PathLike, mode: str = "wb", *, name: str | os.PathLike | None = None) -> CheckedFile:
    """Open `path` for writing (appends, files written in parts); a failed open, write, flush or sync is
    a WriteError naming `name` (default `path`) with a fix."""
    return CheckedFile(Path(path), mode, name if name is not None else path)


def open_temporary(path: str | os.PathLike) -> CheckedFile:
    """`temp_path(path)` opened for writing, its failures named after `path`; `commit` it when complete."""
    return open_writer(temp_path(Path(path)), name=path)


@contextlib.contextmanager
def left_as_found(folder: str | os.PathLike) -> Iterator[Path]:
    """Write into `folder`; if that fails (a full disk, Ctrl-C), a folder that was new or empty is
    left as it was found (removed, or emptied), so running the same command again works instead of
    meeting a half-written folder (exports refuse a non-empty one)."""
    folder = Path(folder)
    new, empty = not folder.exists(), folder.is_dir() and not any(folder.iterdir())
    try:
        yield folder
    except BaseException:
        if new:
            shutil.rmtree(folder, ignore_errors=True)
        elif empty:
            for entry in folder.iterdir():
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- atomic writes


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
        with writing(path, tmp), open(tmp, "wb") as raw:
            f = _Recording(raw)
            try:
                yield f  # type: ignore[misc]
            except Exception as e:
                if f.error is not None and not isinstance(e, OSError):
                    raise f.error from e  # the disk's error, not the writer library's account of it
                raise
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if replace:
        commit(tmp, path)


class _Recording:
    """A binary file that remembers the OSError its last write or flush raised. Writers that report a
    failed write in their own words (torch.save on a full disk: `RuntimeError: [enforce fail at
    inline_container.cc] unexpected pos`) lose the cause; `atomic_write` raises the OSError instead,
    which `writing` turns into a WriteError naming the file and a fix."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.error = raw, None

    def write(self, data) -> int:
        try:
            return self.raw.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        try:
            self.raw.flush()
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str):
        return getattr(self.raw, name)


def commit(tmp: Path, path: Path) -> None:
    """Rename a finished temporary file onto its destination and make the rename durable."""
    with writing(path, tmp):
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

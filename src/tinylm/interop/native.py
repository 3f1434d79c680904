"""Native code in a child process, so that its crash is an error in the parent, not the parent's end.

    parent                                   child (python -X faulthandler -m tinylm.interop.native)
    ChildProcess("pkg.mod:Factory", ...)  ─► imports pkg.mod, builds Factory(**kwargs)
    child.call("method", *args)  ──request─► getattr(obj, method)(*args)
                                 ◄─reply──── JSON value, or a NumPy array sent as raw bytes
    child died (SIGSEGV, SIGABRT, exit)  ──► NativeCrash: the signal's name, the call, the likely
                                             cause the caller gave, the last lines of its stderr

A C library called through ctypes (llama.cpp through llama-cpp-python) that segfaults takes the
whole Python process with it: a test suite stops without a summary, a benchmark without a table.
Run it behind `ChildProcess` and the crash becomes a `NativeCrash` raised by `call`, with the same
object's methods otherwise (tinylm's llama.cpp runner, `interop/llama_cpp.py`, is built on it).

Messages are length-prefixed frames on the child's stdin and on a copy of its original stdout:
file descriptor 1 is pointed at stderr in the child, so whatever native code prints can never
corrupt the protocol. Replies are JSON (plain values) plus, for NumPy arrays, their raw bytes; no
pickle crosses the pipe. The child's stderr goes to a temporary file whose last lines go into the
error (with `-X faulthandler` they include the Python stack of the crash).
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tinylm.errors import TinylmError

_FRAME = struct.Struct("<QQ")  # header bytes, payload bytes


class NativeCrash(TinylmError):
    """A child process running native code died (a signal or an exit) or stopped answering."""

    def __init__(self, message: str, returncode: int | None = None):
        super().__init__(message)
        self.returncode = returncode

    @property
    def signal_name(self) -> str | None:
        """'SIGSEGV' for a child killed by signal 11, None when it exited or hung."""
        if self.returncode is None or self.returncode >= 0:
            return None
        return signal_name(-self.returncode)


class ChildError(TinylmError):
    """A Python exception raised inside the child (it kept running): its type and message."""


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# --------------------------------------------------------------------------- framing


def _write_frame(fd: int, header: dict[str, Any] | bytes, payload: bytes = b"") -> None:
    head = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    data = _FRAME.pack(len(head), len(payload)) + head + payload
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int, deadline: float | None = None) -> tuple[dict[str, Any], bytes]:
    head_len, payload_len = _FRAME.unpack(_read_exact(fd, _FRAME.size, deadline))
    header = json.loads(_read_exact(fd, head_len, deadline))
    return header, _read_exact(fd, payload_len, deadline) if payload_len else b""


def _encode(value: Any) -> tuple[dict[str, Any], bytes]:
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        return {"array": {"dtype": array.dtype.str, "shape": list(array.shape)}}, array.tobytes()
    return {"value": value}, b""


def _decode(header: dict[str, Any], payload: bytes) -> Any:
    if "array" in header:
        spec = header["array"]
        return np.frombuffer(payload, dtype=np.dtype(spec["dtype"])).reshape(spec["shape"]).copy()
    return header.get("value")


# --------------------------------------------------------------------------- parent side


class ChildProcess:
    """An object built and called in a child Python process.

    `target` is "package.module:Factory"; the child imports it and calls `Factory(**kwargs)`.
    `call(method, *args)` runs `obj.method(*args)` there and returns its result: JSON values
    (lists, dicts, numbers, strings) or a NumPy array. `name` names the child in errors; `hint` is
    the likely cause a crash message gives (e.g. a known upstream bug and its workaround).
    `path` entries are put first on the child's `sys.path` (modules outside installed packages).
    `timeout` bounds each call in seconds (None: no bound); a call past it kills the child.

    Raises `NativeCrash` when the child dies or times out (the process is gone; later calls raise
    it again) and `ChildError` for a Python exception inside the child, or a return value that JSON
    cannot encode (the child keeps serving). A failed start (the factory raised, the child died)
    closes the child before raising: no process outlives the error.
    """

    def __init__(self, target: str, kwargs: dict[str, Any] | None = None, *, name: str | None = None,
                 hint: str = "", path: list[str] | None = None, timeout: float | None = 300.0,
                 env: dict[str, str] | None = None):
        self.name = name or target
        self.hint = hint
        self.timeout = timeout
        self._dead: NativeCrash | None = None
        self._stderr = tempfile.TemporaryFile()
        child_env = dict(os.environ if env is None else env)
        here = str(Path(__file__).resolve().parents[2])  # the folder holding this tinylm package
        entries = [*(path or []), here, child_env.get("PYTHONPATH", "")]
        child_env["PYTHONPATH"] = os.pathsep.join(entry for entry in entries if entry)
        self._proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "tinylm.interop.native"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                      env=child_env)
        try:
            self._call("__init__", [target, kwargs or {}], what=f"starting {target}")
        except BaseException:  # a failed start leaves no child behind (the error's traceback would keep it)
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self._proc.pid

    def call(self, method: str, *args: Any) -> Any:
        return self._call(method, list(args), what=f"{method}()")

    def _call(self, method: str, args: list[Any], what: str) -> Any:
        if self._dead is not None:
            raise self._dead
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            _write_frame(self._proc.stdin.fileno(), {"method": method, "args": args})
            header, payload = _read_frame(self._proc.stdout.fileno(), deadline)
        except (BrokenPipeError, EOFError):
            raise self._died(what) from None
        except TimeoutError:
            self._proc.kill()
            raise self._died(what, timed_out=True) from None
        if "error" in header:
            raise ChildError(f"{self.name}: {header['error']}")
        return _decode(header, payload)

    def _died(self, what: str, timed_out: bool = False) -> NativeCrash:
        try:
            code = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        if timed_out:
            how = f"stopped answering for {self.timeout:g} s and was killed"
        elif code < 0:
            how = f"died with {signal_name(-code)} (signal {-code})"
        else:
            how = f"exited with status {code}"
        tail = self.stderr_tail()
        message = f"{self.name} (child process {self._proc.pid}) {how} during {what}"
        if self.hint and not timed_out:
            message += f"; likely cause: {self.hint}"
        if tail:
            message += f"; last lines of its stderr: {tail}"
        self._dead = NativeCrash(message, None if timed_out else code)
        return self._dead

    def stderr_text(self, limit: int = 65536) -> str:
        """The last `limit` bytes the child wrote to stderr (native libraries' logs land here too)."""
        self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, self._stderr.tell() - limit))
        return self._stderr.read().decode("utf-8", "replace")

    def stderr_tail(self, lines: int = 6) -> str:
        """What the child last wrote to stderr, one line of ' | '-joined lines: from the faulthandler
        report of a fatal error (the error and the innermost frames of the stack) when there is one,
        else its last `lines` lines."""
        kept = [line.strip() for line in self.stderr_text().splitlines() if line.strip()]
        fatal = next((i for i, line in enumerate(kept) if line.startswith("Fatal Python error")), None)
        kept = kept[fatal:fatal + lines] if fatal is not None else kept[-lines:]
        return " | ".join(kept)

    def close(self) -> None:
        """Ask the child to end, then make sure it has (idempotent)."""
        if self._proc.poll() is None and self._dead is None:
            try:
                _write_frame(self._proc.stdin.fileno(), {"method": "__exit__", "args": []})
            except OSError:
                pass
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._stderr.close()

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()


# --------------------------------------------------------------------------- child side


def _serve(requests: int, replies: int) -> None:
    obj: Any = None
    while True:
        try:
            header, _ = _read_frame(requests)
        except EOFError:
            return
        method, args = header["method"], header["args"]
        if method == "__exit__":
            return
        try:
            if method == "__init__":
                module, _, factory = args[0].partition(":")
                obj = getattr(importlib.import_module(module), factory)(**args[1])
                result: Any = None
            else:
                result = getattr(obj, method)(*args)
            reply, payload = _encode(result)
            head = _reply_bytes(reply, method, result)
        except Exception as e:  # noqa: BLE001 - reported to the parent, which raises ChildError
            head, payload = json.dumps({"error": f"{type(e).__name__}: {e}"}).encode("utf-8"), b""
        _write_frame(replies, head, payload)


def _reply_bytes(reply: dict[str, Any], method: str, result: Any) -> bytes:
    """The reply's JSON header; a value JSON cannot encode is the method's error (ChildError in the
    parent, naming the method and the type), not a dead child."""
    try:
        return json.dumps(reply).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise TypeError(f"{method}() returned a {type(result).__name__}, which cannot be sent to the parent ({e}); "
                        "return JSON values (lists, dicts, numbers, strings, None) or a NumPy array") from None


def main() -> None:
    try:  # a crash here is expected and reported to the parent: no core file left in its folder
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass
    replies = os.dup(1)  # the protocol keeps the real stdout; native prints go to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _serve(0, replies)


if __name__ == "__main__":
    main()

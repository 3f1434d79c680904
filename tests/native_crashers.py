"""Children that fail on purpose, for tests of tinylm.interop.native and llama_cpp's repack probe
(imported in the child process: tests/ is put on its sys.path)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tinylm.interop.llama_cpp import LlamaCppModel


class Crasher:
    """A child with calls that segfault, abort, raise, exit or hang."""

    def echo(self, value: object) -> object:
        return value

    def segfault(self) -> None:
        os.kill(os.getpid(), signal.SIGSEGV)

    def abort(self) -> None:
        os.abort()

    def write_stdout(self, text: str) -> str:
        """What native code does with printf: bytes straight to file descriptor 1, and print()."""
        os.write(1, text.encode())
        print(text)
        return "written"

    def raise_error(self) -> None:
        raise ValueError("a Python error in the child")

    def exit(self, code: int) -> None:
        os._exit(code)

    def hang(self, seconds: float) -> None:
        time.sleep(seconds)

    def unencodable(self) -> object:
        return {"ids": {1, 2}}  # a set: JSON cannot encode it

    def array(self, n: int):  # noqa: ANN201
        import numpy as np

        return np.arange(n * 3, dtype=np.float32).reshape(n, 3)


class AMXLikeLlama(LlamaCppModel):
    """llama.cpp as it behaves on an AMX CPU with the upstream bug: with weight repacking on, the
    first decode of a quantized file (not f32 / f16) segfaults; with it off (use_extra_bufts = False),
    it decodes normally."""

    def __init__(self, path: str, repack: bool = True, **options: object):
        super().__init__(path, repack=repack, **options)
        self.crashes = repack and self.llm.metadata.get("general.file_type") not in ("0", "1")

    def greedy(self, ids: list[int], n: int) -> dict:
        if self.crashes:
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().greedy(ids, n)


class CrashAlways(LlamaCppModel):
    """llama.cpp with a bug that repacking has nothing to do with: every decode segfaults."""

    def greedy(self, ids: list[int], n: int) -> dict:
        os.kill(os.getpid(), signal.SIGSEGV)
        return {}


class SlowProbe(LlamaCppModel):
    """A decode that hangs (the probe times out)."""

    def greedy(self, ids: list[int], n: int) -> dict:
        time.sleep(60)
        return {}


class RaisingProbe(LlamaCppModel):
    """A decode that raises a Python error."""

    def greedy(self, ids: list[int], n: int) -> dict:
        raise RuntimeError("boom in the probe")


def live_children() -> list[int]:
    """The ids of this process's live (not yet reaped) child processes running tinylm.interop.native."""
    me, out = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, ...
        if int(fields[1]) == me and b"tinylm.interop.native" in cmdline:
            out.append(int(entry.name))
    return out

"""Children that fail on purpose, for tests of tinylm.interop.native and llama_cpp's repack probe
(imported in the child process: tests/ is put on its sys.path)."""

from __future__ import annotations

import os
import signal
import time

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

"""llama.cpp (llama-cpp-python) in a child process: run a GGUF file without risking this process.

    open_llama_cpp(path, **options) -> LlamaCpp    one probe decode with llama.cpp's defaults; if the
                                                   child dies by a signal, a new child with weight
                                                   repacking off, probed too (a crash there is raised)
    LlamaCpp(path, repack=True, **options)         a GGUF file loaded in a child (options: Llama(...)'s),
                                                   after check_gguf(path): a GGUF file, or a one-line error
        .tokenize(text, add_bos, special) -> ids   .metadata() -> {key: value}
        .logits(ids) -> (len(ids), n_vocab)        .greedy(ids, n) -> {"ids", "wall_s", "cpu_s"}
    disable_repack()                               in this process: llama-cpp-python loads with
                                                   use_extra_bufts = False (for users' own scripts)

Why a child: llama.cpp is C++ called through ctypes, and a crash inside it ends the Python process.
One such crash is known: builds for Intel CPUs with AMX repack quantized weights (q8_0, q4_*) into
AMX buffers at load time, and decoding them can segfault in `ggml_backend_amx_mul_mat`
(ggml-org/llama.cpp#20824; f32/f16 files are not repacked). Loading with the model parameter
`use_extra_bufts = False` (the llama-cli / llama-server flag `--no-repack`) decodes correctly.
`open_llama_cpp` detects it on the machine it runs on instead of guessing from the CPU: it decodes
once in a child with the defaults and only turns repacking off when that child died by a signal
(a timeout or an exit is raised as it is) and a child with repacking off decodes. Only crashes of
quantized files name the AMX bug as the likely cause. The tests
(tests/test_gguf.py) and `bench/decode.py` run llama.cpp only through this module.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from tinylm.errors import DataError
from tinylm.interop.native import ChildProcess, NativeCrash

ISSUE = "https://github.com/ggml-org/llama.cpp/issues/20824"
AMX_REPACK_NOTE = ("llama.cpp builds for CPUs with AMX can crash (SIGSEGV) decoding quantized GGUF files, "
                   f"whose weights they repack for AMX ({ISSUE}); the workaround is to turn repacking off: "
                   "--no-repack for llama-cli and llama-server, use_extra_bufts = False in llama-cpp-python "
                   "(tinylm.interop.llama_cpp.disable_repack(); see docs/export.md)")
NATIVE_NOTE = ("a crash inside llama.cpp (this file is not quantized, so weight repacking for AMX is not the "
               "cause); check the file, e.g. export it again, or report it to llama.cpp")
REPACK_OFF_NOTE = ("a crash inside llama.cpp with weight repacking off (so not the AMX repacking bug); check the "
                   "file, e.g. export it again, or report it to llama.cpp")
NOT_QUANTIZED = ("0", "1", "32")  # general.file_type of all-F32, mostly-F16 and mostly-BF16 files: never repacked
GGUF_MAGIC = b"GGUF"
GGUF_HEADER_BYTES = 24  # magic, version (uint32), tensor count and metadata count (uint64 each)
PROBE_TOKENS = 32  # a prefill of this many ids, then PROBE_NEW decoded: both matrix-multiply paths run
PROBE_NEW = 8


def disable_repack() -> None:
    """Make llama-cpp-python load every later model with `use_extra_bufts = False` (no weight
    repacking into AMX / CPU_REPACK buffers), the Python equivalent of llama-cli's `--no-repack`.
    llama-cpp-python has no constructor argument for it; this wraps its default model parameters."""
    import llama_cpp.llama_cpp as lib

    defaults = lib.llama_model_default_params
    if getattr(defaults, "tinylm_no_repack", False):
        return

    def no_repack():
        params = defaults()
        params.use_extra_bufts = False
        return params

    no_repack.tinylm_no_repack = True  # type: ignore[attr-defined]
    lib.llama_model_default_params = no_repack


def check_gguf(path: str | Path) -> Path:
    """`path` if it can be a GGUF file: an existing file that starts with the GGUF magic and holds a
    whole header; else a one-line DataError saying what it is instead (llama-cpp-python's own error
    is only "Failed to load model from file"). A file cut later is reported by llama.cpp's log."""
    p = Path(path)
    fix = "give the .gguf file `tinylm export --format gguf` (or llama.cpp's converter) wrote"
    if p.is_dir():
        raise DataError(f"{p} is a folder, not a GGUF file; {fix}")
    if not p.is_file():
        raise DataError(f"{p} does not exist; {fix}")
    with open(p, "rb") as f:
        head = f.read(GGUF_HEADER_BYTES)
    if head[:4] != GGUF_MAGIC:
        raise DataError(f"{p} is not a GGUF file (it starts with {head[:4]!r}, a GGUF file with b'GGUF'); {fix}")
    if len(head) < GGUF_HEADER_BYTES:
        raise DataError(f"{p} is truncated ({len(head)} bytes, less than a GGUF header); {fix} again")
    return p


GGML_LOG_ERROR, GGML_LOG_CONT = 4, 5  # ggml.h enum ggml_log_level (NONE, DEBUG, INFO, WARN, ERROR, CONT)
_LOG_ERRORS: list[str] = []  # llama.cpp's error-level log lines in this (child) process
_LOG_CALLBACK: Any = None


def _capture_errors() -> None:
    """Keep llama.cpp's error log lines (with verbose=False llama-cpp-python sends its log to /dev/null)
    so that a failed load can say why; what llama-cpp-python prints is unchanged."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return
    import llama_cpp
    from llama_cpp import _logger

    last = [0]

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if level == GGML_LOG_ERROR or (level == GGML_LOG_CONT and last[0] == GGML_LOG_ERROR):
            _LOG_ERRORS.append(text.decode("utf-8", "replace"))
        if level != GGML_LOG_CONT:
            last[0] = level
        _logger.llama_log_callback(level, text, user_data)

    _LOG_CALLBACK = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


class LlamaCppModel:
    """The child's side: one llama_cpp.Llama and the calls the parent makes on it (`LlamaCpp` proxies
    them; a subclass named by `LlamaCpp(model="module:Class")` can change or add calls)."""

    def __init__(self, path: str, repack: bool = True, **options: Any):
        import llama_cpp

        if not repack:
            disable_repack()
        options.setdefault("verbose", False)
        _capture_errors()
        del _LOG_ERRORS[:]
        try:
            self.llm = llama_cpp.Llama(path, **options)
        except ValueError as e:  # "Failed to load model from file": llama.cpp's log says why
            lines = [" ".join(line.split()) for line in "".join(_LOG_ERRORS).splitlines() if line.strip()]
            if not lines:
                raise
            raise ValueError(f"{e} (llama.cpp: {'; '.join(lines[:4])})") from None

    def tokenize(self, text: str, add_bos: bool, special: bool) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def metadata(self) -> dict[str, str]:
        return dict(self.llm.metadata)

    def n_vocab(self) -> int:
        return self.llm.n_vocab()

    def n_ctx(self) -> int:
        return self.llm.n_ctx()

    def logits(self, ids: list[int]):
        import numpy as np

        self.llm.reset()
        self.llm.eval(ids)
        return np.asarray(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids: list[int], n: int) -> dict[str, Any]:
        """llama.cpp's own greedy sampler for `n` tokens (end-of-text included, not stopping), with
        the wall and process CPU seconds the generation took in this child."""
        import time

        out: list[int] = []
        cpu, start = time.process_time(), time.perf_counter()
        if n > 0:
            for token in self.llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                           reset=True):
                out.append(int(token))
                if len(out) == n:
                    break
        return {"ids": out, "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu}

    def close(self) -> None:
        self.llm.close()


class LlamaCpp:
    """A GGUF file loaded by llama.cpp in a child process (see the module docstring).

    `options` go to `llama_cpp.Llama` (n_ctx, n_batch, n_threads, vocab_only, logits_all, type_k, ...);
    `repack=False` loads with `use_extra_bufts = False`; `model` is the child's class ("module:Class",
    default `LlamaCppModel`), importable with `pythonpath` first on the child's sys.path.
    `repack_crash` is the message of the crash that made `open_llama_cpp` turn repacking off (None
    otherwise); `quantized` whether the file's type (general.file_type) is other than F32/F16/BF16.
    Every call raises `NativeCrash` (signal, call, likely cause, stderr) if llama.cpp dies: the likely
    cause is the AMX repacking bug only for a quantized file loaded with repacking on. A path that is
    not a GGUF file is a DataError (`check_gguf`), a load that fails a ChildError with llama.cpp's
    reason; either way no child is left running. Use it as a context manager or `close()`."""

    def __init__(self, path: str, *, repack: bool = True, timeout: float | None = 300.0,
                 model: str = f"{__name__}:LlamaCppModel", pythonpath: list[str] | None = None, **options: Any):
        self.path = str(check_gguf(path))
        self.repack = repack
        self.repack_crash: str | None = None
        self._child = ChildProcess(model, {"path": self.path, "repack": repack, **options},
                                   name=f"llama.cpp on {self.path}" + ("" if repack else " (repack off)"),
                                   hint=NATIVE_NOTE if repack else REPACK_OFF_NOTE, path=pythonpath, timeout=timeout)
        try:
            self.quantized = self._child.call("metadata").get("general.file_type") not in NOT_QUANTIZED
        except BaseException:
            self._child.close()
            raise
        if repack and self.quantized:
            self._child.hint = AMX_REPACK_NOTE

    @property
    def label(self) -> str:
        """'' with llama.cpp's defaults, ' (repack off)' when weight repacking was turned off."""
        return "" if self.repack else " (repack off)"

    def tokenize(self, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
        return self._child.call("tokenize", text, add_bos, special)

    def metadata(self) -> dict[str, str]:
        return self._child.call("metadata")

    def n_vocab(self) -> int:
        return self._child.call("n_vocab")

    def n_ctx(self) -> int:
        return self._child.call("n_ctx")

    def logits(self, ids: list[int]):
        """The logits of every position of `ids` (load with logits_all=True), after a reset."""
        return self._child.call("logits", [int(i) for i in ids])

    def greedy(self, ids: list[int], n: int) -> dict[str, Any]:
        """{"ids": n greedy ids after `ids`, "wall_s", "cpu_s": the child's own timing}."""
        return self._child.call("greedy", [int(i) for i in ids], int(n))

    def log(self) -> str:
        """What llama.cpp logged in the child (its stderr; load with verbose=True for the full log)."""
        return self._child.stderr_text()

    def close(self) -> None:
        self._child.close()

    def __enter__(self) -> LlamaCpp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _probe(llm: LlamaCpp) -> None:
    """One real decode: a prefill of up to PROBE_TOKENS ids, then PROBE_NEW greedy tokens."""
    vocab, room = llm.n_vocab(), max(1, min(PROBE_TOKENS, llm.n_ctx() - PROBE_NEW))
    llm.greedy([i % vocab for i in range(1, room + 1)], PROBE_NEW)


def _probed(llm: LlamaCpp) -> NativeCrash | None:
    """None if the probe decodes; the crash if the child died by a signal (it is closed then). A
    timeout, an exit or a Python error is raised as it is, the child closed."""
    try:
        _probe(llm)
        return None
    except NativeCrash as crash:
        llm.close()
        if crash.signal_name is None:  # a hang or an exit: not the repacking crash
            raise
        return crash
    except BaseException:
        llm.close()
        raise


def open_llama_cpp(path: str, **options: Any) -> LlamaCpp:
    """`path` in llama.cpp, with weight repacking on unless a probe shows it crashes here.

    The probe is one real decode in the child that will serve the calls: a prefill of up to
    PROBE_TOKENS ids, then PROBE_NEW greedy tokens. When that child dies by a signal (e.g. SIGSEGV on
    an AMX CPU with a quantized file), a fresh child loads the file with `repack=False` and is probed
    the same way; if it decodes, it is returned, its `repack_crash` keeping the first child's message.
    If it dies too, repacking was not the cause: NativeCrash, naming both crashes and no AMX bug. A
    probe that times out or exits is raised as it is (NativeCrash), a Python error in it as ChildError;
    every child of a failed open is closed. Files loaded with `vocab_only=True`, or with
    `repack=False` asked for, are not probed."""
    llm = LlamaCpp(path, **options)
    if options.get("vocab_only") or not llm.repack:
        return llm
    first = _probed(llm)
    if first is None:
        return llm
    fallback = LlamaCpp(path, **{**options, "repack": False})
    second = _probed(fallback)
    if second is not None:
        raise NativeCrash(f"{second} (it died with {first.signal_name} with llama.cpp's defaults too: turning "
                          "weight repacking off does not avoid this crash)", second.returncode)
    fallback.repack_crash = str(first)
    return fallback

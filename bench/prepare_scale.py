"""Benchmark: prepare ~100 MB of real text (bundled Shakespeare, plus ../shared/data corpora
when present, repeated) and report throughput and peak resident memory per process.

    python bench/prepare_scale.py [--mb 100] [--tokenizer gpt2] [--workers 0] [--shape lf]

`--shape` lays the same text out as one document of another shape (issue 27: memory must not
depend on it): `docs` (the default: documents separated by <|endoftext|> lines), `lf` (the
separators replaced by blank lines: one document), `crlf` and `cr` (that document with Windows or
old Mac line breaks), `oneline` (no line break at all: each one a space), `jsonl-record` (the
document as the "text" of one JSON-lines record), `parquet-cell` (one Parquet row holding it).

Prints one JSON line; BENCHMARKS.md records the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SHARED = Path(os.environ.get("TINYLM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


SHAPES = ("docs", "lf", "crlf", "cr", "oneline", "jsonl-record", "parquet-cell")
SUFFIX = {"jsonl-record": ".jsonl", "parquet-cell": ".parquet"}


def make_shape(path: Path, size: int, shape: str) -> Path:
    """`make_corpus`'s text laid out as `shape` (see the module docstring), at `path` with the
    shape's suffix."""
    if shape == "docs":
        return make_corpus(path, size)
    text = make_corpus(path.with_name("docs.txt"), size).read_text(encoding="utf-8").replace("\n<|endoftext|>\n", "\n\n")
    out = path.with_suffix(SUFFIX.get(shape, ".txt"))
    if shape == "jsonl-record":
        out.write_text(json.dumps({"id": 1, "text": text}) + "\n", encoding="utf-8")
    elif shape == "parquet-cell":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": [text]}), out)
    else:
        breaks = {"lf": "\n", "crlf": "\r\n", "cr": "\r", "oneline": " "}[shape]
        out.write_bytes(text.replace("\n", breaks).encode("utf-8"))
    return out


def make_corpus(path: Path, size: int) -> Path:
    """About `size` bytes of real text: documents separated by <|endoftext|> lines, repeated."""
    from tinylm.data.spec import read_source

    docs = read_source("shakespeare").documents()
    for extra in ("tinystories/train-head.txt", "wikitext-2/wiki.valid.tokens"):
        if (SHARED / extra).is_file():
            docs += [d for d in (SHARED / extra).read_text(encoding="utf-8").split("\n\n\n") if d.strip()]
    block = "".join(f"{d}\n<|endoftext|>\n" for d in docs).encode("utf-8")
    with open(path, "wb") as f:
        written = 0
        while written < size:
            chunk = block[:size - written]
            f.write(chunk)
            written += len(chunk)
    return path


# Runs `tinylm prepare` and reports peak memory: /proc/PID/status VmHWM of the main process, read
# from inside it at exit, and of each worker process, polled from here while they run (VmHWM is the
# peak of the process's own memory since exec; ru_maxrss is no good for a child: Linux carries the
# pre-exec high-water mark over exec, i.e. the RSS of whatever forked it, so a worker started when
# the main process was large reported the main process's size).
_MEASURED = """import runpy, sys
sys.argv = ["tinylm"] + sys.argv[1:]
try:
    runpy.run_module("tinylm", run_name="__main__")
finally:
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
    print("PEAK_KB", hwm, file=sys.stderr)
"""


def _children_hwm_kb(pid: int, peaks: dict[int, int]) -> None:
    """Record the VmHWM of every child process of `pid` (its workers) into `peaks`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("PPid", "").strip() == str(pid) and "VmHWM" in fields:
            peaks[int(entry)] = max(peaks.get(int(entry), 0), int(fields["VmHWM"].split()[0]))


def run_prepare(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """`tinylm prepare ARGS` in a new process: (completed process, main peak MB, largest worker peak MB)."""
    argv = [sys.executable, "-c", _MEASURED, "prepare", *args]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, int] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.05):
            _children_hwm_kb(proc.pid, peaks)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    stdout, stderr = proc.communicate()
    stop.set()
    poller.join()
    done = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    main_kb = int(stderr.rsplit("PEAK_KB", 1)[1].split()[0]) if "PEAK_KB" in stderr else 0
    return done, main_kb / 1024, max(peaks.values(), default=0) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--tokenizer", default="gpt2")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--shape", choices=SHAPES, default="docs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_shape(Path(tmp) / "corpus.txt", args.mb * 1_000_000, args.shape)
        env = {**os.environ, "TINYLM_CACHE": str(Path(tmp) / "cache")}
        start = time.perf_counter()
        done, main_mb, worker_mb = run_prepare([str(corpus), "--tokenizer", args.tokenizer, "--workers",
                                                str(args.workers), "--out", str(Path(tmp) / "data")], env)
        seconds = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(done.stderr)
        meta = json.loads((Path(tmp) / "data" / "meta.json").read_text())
    tokens = sum(s["tokens"] for s in meta["splits"].values())
    print(json.dumps({
        "mb": args.mb, "shape": args.shape, "tokenizer": args.tokenizer, "workers": args.workers or "auto",
        "tokens": tokens,
        "seconds": round(seconds, 1), "mb_per_s": round(args.mb / seconds, 1),
        "peak_rss_mb_main": round(main_mb), "peak_rss_mb_worker": round(worker_mb),
        "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine()}))


if __name__ == "__main__":
    main()

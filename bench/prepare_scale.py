"""Benchmark: prepare ~100 MB of real text (bundled Shakespeare, plus ../shared/data corpora
when present, repeated) and report throughput and peak resident memory per process.

    python bench/prepare_scale.py [--mb 100] [--tokenizer gpt2] [--workers 0]

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
import time
from pathlib import Path

SHARED = Path(os.environ.get("TINYLM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


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


# Runs `tinylm prepare` and reports peak memory from inside the process: /proc/self/status
# VmHWM of the main process (ru_maxrss is no good for a child: Linux carries the pre-exec
# high-water mark over exec, i.e. the RSS of whatever forked it) and ru_maxrss of its workers.
_MEASURED = """import resource, runpy, sys
sys.argv = ["tinylm"] + sys.argv[1:]
try:
    runpy.run_module("tinylm", run_name="__main__")
finally:
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
    print("PEAK_KB", hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
"""


def run_prepare(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """`tinylm prepare ARGS` in a new process: (completed process, main peak MB, largest worker peak MB)."""
    done = subprocess.run([sys.executable, "-c", _MEASURED, "prepare", *args], env=env, capture_output=True,
                          text=True)
    main_kb, worker_kb = map(int, done.stderr.rsplit("PEAK_KB", 1)[1].split()) if "PEAK_KB" in done.stderr else (0, 0)
    return done, main_kb / 1024, worker_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--tokenizer", default="gpt2")
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_corpus(Path(tmp) / "corpus.txt", args.mb * 1_000_000)
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
        "mb": args.mb, "tokenizer": args.tokenizer, "workers": args.workers or "auto", "tokens": tokens,
        "seconds": round(seconds, 1), "mb_per_s": round(args.mb / seconds, 1),
        "peak_rss_mb_main": round(main_mb), "peak_rss_mb_worker": round(worker_mb),
        "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine()}))


if __name__ == "__main__":
    main()

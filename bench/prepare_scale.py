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
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(os.environ.get("TINYLM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def make_corpus(path: Path, size: int) -> Path:
    """About `size` bytes of real text: documents separated by <|endoftext|> lines, repeated."""
    from tinylm.data.sources import read_source

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


def peak_rss_mb(which: int) -> float:
    return resource.getrusage(which).ru_maxrss / 1024  # kilobytes on Linux


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
        subprocess.run([sys.executable, "-m", "tinylm", "prepare", str(corpus), "--tokenizer", args.tokenizer,
                        "--workers", str(args.workers), "--out", str(Path(tmp) / "data")], env=env, check=True)
        seconds = time.perf_counter() - start
        meta = json.loads((Path(tmp) / "data" / "meta.json").read_text())
    tokens = sum(s["tokens"] for s in meta["splits"].values())
    print(json.dumps({
        "mb": args.mb, "tokenizer": args.tokenizer, "workers": args.workers or "auto", "tokens": tokens,
        "seconds": round(seconds, 1), "mb_per_s": round(args.mb / seconds, 1),
        "peak_rss_mb": round(peak_rss_mb(resource.RUSAGE_CHILDREN)),  # the largest process (main or a worker)
        "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine()}))


if __name__ == "__main__":
    main()

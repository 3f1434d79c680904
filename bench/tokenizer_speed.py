"""Tokenizer speed and compression on tinyshakespeare, and BPE training time at scale.

    python bench/tokenizer_speed.py                 # encode throughput of char, word, gpt2, bpe:2048/4096
    python bench/tokenizer_speed.py --train-mb 100  # also: time to train bpe:4096 on ~100 MB of text

Encode throughput is what `tinylm prepare` does: the text cut into safe chunks and encoded with
`encode_batch` (best of 3, after one warm-up). The 100 MB training corpus is every text in the
shared data folder plus the bundled Shakespeare, repeated until it reaches the size (so the
distinct words stay those of ~9 MB of real text; the counting pass sees the full 100 MB).
Prints one JSON line per measurement. TINYLM_SHARED_DATA points at the shared corpora.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TINYLM_SHARED_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT / "bench"))
from shakespeare_char import machine  # noqa: E402

from tinylm.data.spec import read_source  # noqa: E402
from tinylm.tokenizers import train_tokenizer  # noqa: E402
from tinylm.tokenizers.base import safe_chunks  # noqa: E402


def best_of(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def encode_speed(text: str) -> None:
    mb = len(text.encode("utf-8")) / 1e6
    chunks = safe_chunks(text)
    for spec in ("char", "word", "gpt2", "bpe:2048", "bpe:4096"):
        start = time.perf_counter()
        tok = train_tokenizer(spec, [text])
        trained = time.perf_counter() - start
        tokens = sum(len(ids) for ids in tok.encode_batch(chunks))
        seconds = best_of(lambda tok=tok: tok.encode_batch(chunks))
        print(json.dumps({"bench": "encode", "tokenizer": spec, "vocab": tok.vocab_size, "tokens": tokens,
                          "chars_per_token": round(len(text) / tokens, 3), "train_s": round(trained, 2),
                          "encode_MB_per_s": round(mb / seconds, 1), "machine": machine()}), flush=True)


def train_speed(megabytes: float) -> None:
    texts = [p.read_text(encoding="utf-8") for p in sorted(SHARED.rglob("*.txt"))] + \
        [p.read_text(encoding="utf-8") for p in sorted(SHARED.rglob("*.tokens"))]
    texts += read_source("shakespeare").documents
    base = sum(len(t.encode("utf-8")) for t in texts)
    corpus = texts * max(1, round(megabytes * 1e6 / base))
    total = sum(len(t.encode("utf-8")) for t in corpus)
    start = time.perf_counter()
    tok = train_tokenizer("bpe:4096", corpus)
    seconds = time.perf_counter() - start
    print(json.dumps({"bench": "bpe-train", "vocab": tok.vocab_size, "distinct_text_MB": round(base / 1e6, 1),
                      "corpus_MB": round(total / 1e6, 1), "train_s": round(seconds, 1), "machine": machine()}),
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-mb", type=float, default=0, help="also time bpe:4096 training on this many MB")
    args = parser.parse_args()
    encode_speed((SHARED / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8"))
    if args.train_mb:
        train_speed(args.train_mb)


if __name__ == "__main__":
    main()

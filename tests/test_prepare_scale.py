"""Preparation at scale, in separate processes: a SIGKILL half-way leaves a directory that is
never taken for complete, and 100 MB of text prepares in bounded memory (bench/prepare_scale.py
reports the same measurement with timings in BENCHMARKS.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinylm.data import read_meta
from tinylm.errors import DataError

REPO = Path(__file__).resolve().parents[1]
# the benchmark script by its path: bench/ on sys.path would let its files shadow packages
_spec = importlib.util.spec_from_file_location("bench_prepare_scale", REPO / "bench" / "prepare_scale.py")
_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench)
make_corpus, run_prepare = _bench.make_corpus, _bench.run_prepare


def _prepare(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tinylm", "prepare", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_during_prepare_then_rerun_gives_a_correct_directory(tmp_path):
    corpus = make_corpus(tmp_path / "corpus.txt", 12_000_000)
    env = {**os.environ, "TINYLM_CACHE": str(tmp_path / "cache")}
    args = [str(corpus), "--tokenizer", "gpt2", "--workers", "1"]
    killed = _prepare([*args, "--out", str(tmp_path / "data")], env)
    partial = tmp_path / "data" / ".train.bin.tmp"
    deadline = time.monotonic() + 60
    while not (partial.is_file() and partial.stat().st_size > 100_000):
        assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    with pytest.raises(DataError, match="not a complete data directory"):
        read_meta(tmp_path / "data")

    for out in ("data", "reference"):  # re-run over the debris, and a clean run to compare with
        done = _prepare([*args, "--out", str(tmp_path / out)], env)
        assert done.wait() == 0, done.communicate()
    meta, reference = read_meta(tmp_path / "data"), read_meta(tmp_path / "reference")
    assert meta["splits"] == reference["splits"] and meta["splits"]["train"]["tokens"] > 2_000_000
    for split in ("train.bin", "val.bin"):
        assert (tmp_path / "data" / split).read_bytes() == (tmp_path / "reference" / split).read_bytes()
    assert not list((tmp_path / "data").glob(".*.tmp"))


@pytest.mark.slow
def test_100_mb_prepare_in_bounded_memory(tmp_path):
    corpus = make_corpus(tmp_path / "corpus.txt", 100_000_000)
    env = {**os.environ, "TINYLM_CACHE": str(tmp_path / "cache")}
    run, main_mb, worker_mb = run_prepare([str(corpus), "--tokenizer", "gpt2", "--out", str(tmp_path / "data")],
                                          env)
    assert run.returncode == 0, run.stderr
    meta = read_meta(tmp_path / "data")
    tokens = meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"]
    print(json.dumps({"main_rss_mb": main_mb, "worker_rss_mb": worker_mb, "tokens": tokens}))
    assert meta["source"]["bytes"] >= 99_000_000 and tokens > 25_000_000
    assert 0 < main_mb < 512 and 0 < worker_mb < 512  # "well under 2 GB", in every process

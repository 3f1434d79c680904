"""Preparing a Parquet dataset through `hf:` (streamed from a local fake of the Hub) vs the same files given locally.

    python bench/hub_prepare.py                 # 100 MB of Parquet, gpt2 tokenizer, automatic worker count
    python bench/hub_prepare.py --mb 2          # a quick check that it runs

Writes a dataset repository laid out as on the Hub (snappy-compressed Parquet shards of about 25 MB
under data/, a README.md naming the config; the text is words of the bundled Shakespeare corpus in a
seeded random order, so it compresses about as much as real text, 1.4:1), serves it with tests/hub_fake.py on
127.0.0.1 and runs, each in a fresh process,

    tinylm prepare hf:bench/shards --tokenizer gpt2 --out A    (HF_ENDPOINT = the fake Hub, empty HF_HOME)
    tinylm prepare DATASET/data   --tokenizer gpt2 --out B    (the same Parquet files on disk)

then checks that A and B hold the same tokens and prints one JSON line per run: seconds, MB/s of
Parquet and of UTF-8 text, tokens, peak resident memory of the main process and of the largest
tokenizer worker (measured as bench/prepare_scale.py does), and the bytes the fake Hub sent. The
network is loopback, so the hf: row measures the libraries' overhead (huggingface_hub, datasets
streaming, Arrow batches), not a real link. Both runs use the tail split, which reads the data
twice (a byte-counting pass, then tokenizing). Run nothing else on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]  # the fake Hub lives with the tests

from hub_fake import FakeHub  # noqa: E402
from prepare_scale import run_prepare  # noqa: E402

SHARD_BYTES = 25 << 20
RATIO = 1.4  # text bytes per Parquet byte (snappy) of this text


def write_dataset(root: Path, megabytes: float, seed: int = 0) -> tuple[int, int]:
    """Parquet shards of about `megabytes` MB in all under root/data; returns (Parquet bytes, text bytes)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(ROOT / "src"))
    from tinylm.data.spec import read_source

    words = np.array(" ".join(read_source("shakespeare").documents()).split())
    rng = np.random.default_rng(seed)
    (root / "data").mkdir(parents=True)
    target, parquet_bytes, text_bytes, shard, texts, pending = megabytes * 1e6, 0, 0, 0, [], 0
    while parquet_bytes + pending / RATIO < target:
        doc = " ".join(words[rng.integers(0, len(words), int(rng.integers(200, 2000)))])
        texts.append(doc)
        pending += len(doc.encode("utf-8"))
        if pending >= RATIO * SHARD_BYTES or parquet_bytes + pending / RATIO >= target:
            path = root / "data" / f"train-{shard:05d}.parquet"
            pq.write_table(pa.table({"text": texts}), path, row_group_size=1000, compression="snappy")
            parquet_bytes += path.stat().st_size
            text_bytes += pending
            shard, texts, pending = shard + 1, [], 0
    (root / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                    "    path: data/train-*\n---\n")
    return parquet_bytes, text_bytes


def measure(args: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """`tinylm prepare ARGS` in a fresh process: (seconds, main peak RSS MB, largest worker peak RSS MB)."""
    start = time.perf_counter()
    done, main_mb, worker_mb = run_prepare(args, env)
    if done.returncode:
        raise SystemExit(f"tinylm prepare {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start, main_mb, worker_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=100.0, help="Parquet megabytes to prepare (default 100)")
    parser.add_argument("--tokenizer", default="gpt2")
    parser.add_argument("--workers", type=int, default=0, help="tokenizer processes (0 = tinylm's automatic choice)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        parquet_bytes, text_bytes = write_dataset(work / "repo", args.mb)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_HOME=str(work / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1", TINYLM_CACHE=str(work / "cache"),
                   PYTHONPATH=os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))
        common = ["--tokenizer", args.tokenizer, "--workers", str(args.workers)]
        with FakeHub() as hub:
            hub.add("bench/shards", work / "repo")
            rows = {"hf": measure(["hf:bench/shards", "--out", str(work / "hf"), *common],
                                  {**env, "HF_ENDPOINT": hub.url}),
                    "local": measure([str(work / "repo" / "data"), "--out", str(work / "local"), *common], env)}
            sent = hub.log.bytes_sent
        for split in ("train", "val"):
            if (work / "hf" / f"{split}.bin").read_bytes() != (work / "local" / f"{split}.bin").read_bytes():
                raise SystemExit(f"the {split} tokens differ between hf: and the local files")
        meta = json.loads((work / "local" / "meta.json").read_text())
        tokens = sum(s["tokens"] for s in meta["splits"].values())
        for source, (seconds, main_mb, worker_mb) in rows.items():
            print(json.dumps({
                "source": source, "parquet_mb": round(parquet_bytes / 1e6, 1), "text_mb": round(text_bytes / 1e6, 1),
                "tokenizer": args.tokenizer, "seconds": round(seconds, 1),
                "parquet_mb_per_s": round(parquet_bytes / 1e6 / seconds, 1),
                "text_mb_per_s": round(text_bytes / 1e6 / seconds, 1), "tokens": tokens,
                "peak_rss_mb_main": round(main_mb), "peak_rss_mb_worker": round(worker_mb),
                **({"bytes_from_hub_mb": round(sent / 1e6, 1)} if source == "hf" else {}),
                "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
                "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()

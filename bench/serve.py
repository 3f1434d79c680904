"""Serving throughput: aggregate tokens/s and time to first token of `tinylm serve` at several concurrencies.

    python bench/serve.py                                   # tinystories-gpt2 size, CPU, float32
    python bench/serve.py --device cuda --dtype bfloat16
    python bench/serve.py --size tiny --tokens 16 --requests 8    # a quick check that it runs

The model has the tinystories-gpt2 preset's shape (6 layers, 6 heads, d_model 384, context 128, GPT-2
BPE vocabulary of 50,257; about 30M parameters) with random weights (weights do not change the speed);
`--size tiny` uses 2 layers of width 64 instead. The server runs as `tinylm serve` in its own process
(`--max-batch 64`); this process is the client. At each concurrency C, C clients each stream requests
one after another (`--requests` per client at least, default 2; C = 1 is one-at-a-time serving) of
`--tokens` new tokens (default 64) after a short prompt, sampling at temperature 1. Aggregate tokens/s
= completion tokens of all requests / wall time; time to first token (TTFT) = from sending a request
to its first text chunk. Prints a Markdown table and one JSON line per concurrency; the target is
aggregate tokens/s at concurrency 16 >= 4x one-at-a-time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from shakespeare_char import machine  # noqa: E402

from tinylm.config import load_preset  # noqa: E402
from tinylm.model import GPT  # noqa: E402
from tinylm.run import MODEL_FILE, save_weights, write_config  # noqa: E402
from tinylm.tokenizers import KINDS  # noqa: E402

PROMPTS = ["Once upon a time", "The little dog", "One day, a girl named Lily", "Tom and his mom went",
           "There was a big tree", "The sun was hot and"]


def make_run(folder: Path, size: str) -> tuple[Path, int]:
    """A run directory with the preset's shape and random weights; returns it and its parameter count."""
    cfg = load_preset("tinystories-gpt2")
    if size == "tiny":
        cfg.model.n_layer, cfg.model.n_head, cfg.model.d_model = 2, 2, 64
    tokenizer = KINDS["gpt2"]()
    cfg.model.vocab_size = cfg.model.embedding_rows(tokenizer.vocab_size)
    cfg.validate()
    torch.manual_seed(0)
    model = GPT(cfg.model)
    run = folder / f"tinystories-gpt2-{size}"
    run.mkdir(parents=True)
    tokenizer.save(run)
    save_weights(model, run / MODEL_FILE, {"step": 0, "tokenizer_fingerprint": tokenizer.fingerprint()})
    write_config(run, cfg)
    return run, model.num_params()


def start_server(run: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    proc = subprocess.Popen([sys.executable, "-m", "tinylm", "serve", str(run), "--port", "0", "--max-batch",
                             str(max(args.concurrency)), "--max-tokens", str(args.tokens), "--device", args.device,
                             "--dtype", args.dtype, "--model-name", "bench"],
                            stdout=subprocess.PIPE, text=True, env=env)
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise SystemExit("the server did not start (see its messages above)")
    return proc, url


async def one_request(client: httpx.AsyncClient, prompt: str, tokens: int, seed: int) -> tuple[float, float, int]:
    """(seconds to the first text chunk, total seconds, completion tokens) of one streamed request."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": tokens, "temperature": 1.0, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, count = None, 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                count = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - start
    total = time.perf_counter() - start
    return (first if first is not None else total), total, count


async def level(url: str, concurrency: int, requests: int, tokens: int) -> dict:
    """Run `requests` streamed requests with `concurrency` clients; aggregate tokens/s and TTFT."""
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        queue = list(range(requests))
        results: list[tuple[float, float, int]] = []

        async def worker() -> None:
            while queue:
                i = queue.pop()
                results.append(await one_request(client, PROMPTS[i % len(PROMPTS)], tokens, seed=i))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ttft = sorted(r[0] for r in results)
    completion = sum(r[2] for r in results)
    return {"concurrency": concurrency, "requests": requests, "completion_tokens": completion,
            "seconds": round(wall, 2), "tokens_per_s": round(completion / wall, 1),
            "ttft_p50_ms": round(1000 * statistics.median(ttft), 1),
            "ttft_p99_ms": round(1000 * ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("tinystories-gpt2", "tiny"), default="tinystories-gpt2")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--requests", type=int, default=2, help="requests per client at each concurrency (at least)")
    ap.add_argument("--min-requests", type=int, default=8, help="requests at each concurrency, at least")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=0, help="the server's torch threads (0 = torch's default)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run, params = make_run(Path(tmp), args.size)
        proc, url = start_server(run, args)
        try:
            asyncio.run(level(url, 1, 2, 8))  # warm-up
            rows = []
            for c in args.concurrency:
                row = asyncio.run(level(url, c, max(c * args.requests, args.min_requests), args.tokens))
                row.update(bench="serve", size=args.size, params=params, tokens_per_request=args.tokens,
                           device=args.device, dtype=args.dtype, machine=machine())
                print(json.dumps(row), flush=True)
                rows.append(row)
        finally:
            proc.terminate()
            proc.wait(30)

    print(f"\n`tinylm serve`, {args.size} size ({params / 1e6:.1f}M parameters, random weights), {args.tokens} "
          f"new tokens per request, {args.device} {args.dtype}; {machine()}")
    print("| concurrency | requests | aggregate tokens/s | vs one at a time | TTFT p50 (ms) | TTFT p99 (ms) |")
    print("|---:|---:|---:|---:|---:|---:|")
    one = next((r["tokens_per_s"] for r in rows if r["concurrency"] == 1), None)
    for r in rows:
        ratio = f"{r['tokens_per_s'] / one:.1f}x" if one else "n/a"
        print(f"| {r['concurrency']} | {r['requests']} | {r['tokens_per_s']:,.1f} | {ratio} | {r['ttft_p50_ms']:,.1f} "
              f"| {r['ttft_p99_ms']:,.1f} |")
    at16 = next((r["tokens_per_s"] for r in rows if r["concurrency"] == 16), None)
    if one and at16:
        verdict = "meets" if at16 >= 4 * one else "misses"
        print(f"\nconcurrency 16 / one at a time = {at16 / one:.1f}x ({verdict} the 4x target)")


if __name__ == "__main__":
    main()

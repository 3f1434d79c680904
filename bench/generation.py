"""Generation speed with and without the KV cache, batch 1.

    python bench/generation.py                      # 256 and 1,024 new tokens, CPU, float32
    python bench/generation.py --tokens 256 --device cuda --dtype bfloat16

The model is a randomly initialised ~12M-parameter GPT (6 layers, d_model 384, 6 heads,
context 256, vocabulary 4,096; weights do not change the speed), decoding greedily from a
16-token prompt. With the cache each new token is one position through the model; past the
context the cache is rebuilt from the last 128 tokens every 128 tokens. Without the cache every
token runs the model over the last 256 tokens. Each setting runs once after a short warm-up;
prints a table and one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from shakespeare_char import machine  # noqa: E402

from tinylm.config import ModelConfig  # noqa: E402
from tinylm.generation import generate_ids  # noqa: E402
from tinylm.model import GPT  # noqa: E402
from tinylm.runtime import resolve_device, resolve_dtype  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[256, 1024], help="new tokens per measurement")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=4096, context=256, n_layer=6, n_head=6, d_model=384)
    model = GPT(cfg).to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    prompt = list(range(1, 17))
    generate_ids(model, prompt, 8, temperature=0, device=device, dtype=dtype)  # warm-up
    generate_ids(model, prompt, 8, temperature=0, device=device, dtype=dtype, use_cache=False)

    rows = []
    for n in args.tokens:
        speeds = {}
        for use_cache in (True, False):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = generate_ids(model, prompt, n, temperature=0, device=device, dtype=dtype, use_cache=use_cache)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            assert len(out) == n
            speeds[use_cache] = n / seconds
            print(json.dumps({"bench": "generation", "new_tokens": n, "kv_cache": use_cache, "batch": 1,
                              "seconds": round(seconds, 2), "tokens_per_s": round(n / seconds, 1),
                              "params": params, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
                              "threads": torch.get_num_threads(), "machine": machine()}), flush=True)
        rows.append((n, speeds[True], speeds[False]))

    print(f"\n{params / 1e6:.1f}M-parameter GPT (6 layers, d_model 384, context 256, vocab 4096), batch 1, "
          f"greedy, {device} {str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} threads; {machine()}")
    print("| new tokens | KV cache (tokens/s) | no cache (tokens/s) | speed-up |")
    print("|---:|---:|---:|---:|")
    for n, cached, uncached in rows:
        print(f"| {n:,} | {cached:,.1f} | {uncached:,.1f} | {cached / uncached:.1f}x |")


if __name__ == "__main__":
    main()

"""llama.cpp (through llama-cpp-python) vs tinylm's own sampling: decode speed and file sizes for one model.

    python bench/gguf.py                          # the tinystories-gpt2 shape (30M parameters), random weights
    python bench/gguf.py --train-steps 200        # briefly trained on the bundled corpus first (same speed)
    python bench/gguf.py --tiny --tokens 32       # a 2-layer, width-64 model: checks the script in seconds

The model is a preset's shape (default tinystories-gpt2: 6 layers, width 384, context 128, GPT-2's 50,257
tokens) with the gpt2 tokenizer, saved as a tinylm run and exported with `export_gguf` at f32, f16 and
q8_0. Each engine decodes greedily, batch 1, on `--threads` CPU threads (default 2), from the same
16-token prompt, up to the context: llama.cpp's own sampler over the GGUF file (prompt evaluation timed
apart), tinylm's `generate_ids` with the KV cache (float32 weights; `--dtype bfloat16` autocasts). Each
measurement is the best of `--repeats` after a warm-up. Prints a Markdown table (rows for BENCHMARKS.md)
and one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

# this file is bench/gguf.py: keep its folder off sys.path, or `import gguf` would import this script
BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]

import torch  # noqa: E402

_spec = importlib.util.spec_from_file_location("shakespeare_char", BENCH / "shakespeare_char.py")
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
machine = _helpers.machine

from tinylm.config import ModelConfig, RunConfig, load_preset  # noqa: E402
from tinylm.generation import generate_ids  # noqa: E402
from tinylm.interop.gguf import export_gguf  # noqa: E402
from tinylm.model import GPT  # noqa: E402
from tinylm.rundir import MODEL_FILE, save_weights, write_config  # noqa: E402
from tinylm.runtime import resolve_dtype  # noqa: E402
from tinylm.tokenizers import train_tokenizer  # noqa: E402

PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the"


def build_run(run_dir: Path, preset: str, tiny: bool, train_steps: int) -> RunConfig:
    """A run directory with the preset's model shape and the gpt2 tokenizer (random or briefly trained)."""
    cfg = load_preset(preset)
    cfg.data.tokenizer = "gpt2"
    if tiny:
        cfg.model = ModelConfig(**{**cfg.model.__dict__, "n_layer": 2, "n_head": 4, "d_model": 64})
    cfg.model.dropout = 0.0
    tokenizer = train_tokenizer("gpt2", [])
    cfg.model.vocab_size = cfg.model.embedding_rows(tokenizer.vocab_size)
    if train_steps:
        from tinylm.training import train

        cfg.data.source, cfg.data.dir = "shakespeare", ""
        cfg.train.out_dir, cfg.train.max_steps, cfg.train.grad_accum = str(run_dir), train_steps, 1
        cfg.train.batch_size, cfg.train.eval_interval, cfg.train.warmup_steps = 16, train_steps, 20
        cfg.train.lr, cfg.train.eval_tokens = 1e-3, 8192
        train(cfg)
        return cfg
    torch.manual_seed(0)
    model = GPT(cfg.model)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(run_dir)
    write_config(run_dir, cfg)
    save_weights(model, run_dir / MODEL_FILE, {"step": 0, "tokenizer_fingerprint": tokenizer.fingerprint()})
    return cfg


def best_of(repeats: int, fn) -> float:
    fn()  # warm-up
    return min(fn() for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tinystories-gpt2", help="model shape (default tinystories-gpt2)")
    ap.add_argument("--tiny", action="store_true", help="2 layers, width 64: check the script quickly")
    ap.add_argument("--train-steps", type=int, default=0, help="train this many steps first (0: random weights)")
    ap.add_argument("--tokens", type=int, default=0, help="new tokens (default: up to the context)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32", help="tinylm's autocast precision (float32, bfloat16)")
    args = ap.parse_args()

    import llama_cpp

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="tinylm-bench-gguf-"))
    run_dir = work / "run"
    cfg = build_run(run_dir, args.preset, args.tiny, args.train_steps)
    from tinylm.rundir import load

    run = load(run_dir, device="cpu", dtype=args.dtype)
    prompt = run.tokenizer.encode(PROMPT)[:16]
    new = args.tokens or cfg.model.context - len(prompt)
    params = run.model.num_params()
    sizes = {"tinylm safetensors (f32)": (run_dir / MODEL_FILE).stat().st_size}
    rows, common = [], {"bench": "gguf", "preset": args.preset + (" (tiny)" if args.tiny else ""), "params": params,
                        "prompt_tokens": len(prompt), "new_tokens": new, "threads": args.threads, "batch": 1,
                        "trained_steps": args.train_steps, "machine": machine()}

    dtype = resolve_dtype(args.dtype, torch.device("cpu"))

    def tinylm_once() -> float:
        start = time.perf_counter()
        out = generate_ids(run.model, prompt, new, temperature=0.0, dtype=dtype)
        assert len(out) == new
        return time.perf_counter() - start

    seconds = best_of(args.repeats, tinylm_once)
    rows.append((f"tinylm sample ({args.dtype}, KV cache)", sizes["tinylm safetensors (f32)"], new / seconds, None))
    print(json.dumps({**common, "engine": "tinylm", "weights": args.dtype, "seconds": round(seconds, 3),
                      "tokens_per_s": round(new / seconds, 1)}), flush=True)

    for gguf_dtype in ("f32", "f16", "q8_0"):
        path = work / f"model-{gguf_dtype}.gguf"
        export_gguf(run_dir, path, dtype=gguf_dtype)
        sizes[f"GGUF {gguf_dtype}"] = path.stat().st_size
        llm = llama_cpp.Llama(str(path), n_ctx=cfg.model.context, n_batch=cfg.model.context, n_threads=args.threads,
                              n_threads_batch=args.threads, verbose=False)
        timing: dict[str, float] = {}

        def llama_once() -> float:
            start = time.perf_counter()
            out = []
            for token in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                      reset=True):
                if not out:
                    timing["prefill"] = time.perf_counter() - start
                out.append(token)
                if len(out) == new:
                    break
            return time.perf_counter() - start

        seconds = best_of(args.repeats, llama_once)
        llm.close()
        size = sizes[f"GGUF {gguf_dtype}"]
        rows.append((f"llama.cpp ({gguf_dtype})", size, new / seconds, timing["prefill"]))
        print(json.dumps({**common, "engine": "llama.cpp", "weights": gguf_dtype, "file_bytes": size,
                          "seconds": round(seconds, 3), "prefill_seconds": round(timing["prefill"], 4),
                          "tokens_per_s": round(new / seconds, 1)}), flush=True)

    print(f"\n{args.preset}{' (tiny)' if args.tiny else ''}: {params / 1e6:.1f}M parameters, "
          f"{'random weights' if not args.train_steps else f'{args.train_steps} training steps'}, gpt2 tokenizer; "
          f"greedy, batch 1, {len(prompt)}-token prompt + {new} new tokens, {args.threads} threads; {machine()}")
    print("| engine (weights) | file size | tokens/s (prompt + decode) |")
    print("|---|---:|---:|")
    for name, size, speed, _ in rows:
        print(f"| {name} | {size / 1e6:,.1f} MB | {speed:,.1f} |")


if __name__ == "__main__":
    main()

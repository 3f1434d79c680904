"""Decode speed of two source trees of tinylm, measured in pairs so that the machine's load hits both alike.

    python bench/ab_decode.py --src /tmp/before/src --src src            # both bench/decode.py sizes
    python bench/ab_decode.py --src OLD/src --src src --rounds 9 --sizes shakespeare-char

`bench/decode.py` measures one tree per process. On a shared 2-core machine the same tree's numbers
move by up to 50% between two processes minutes apart (2026-12-07: tinylm float32 batch 1 on the
shakespeare-char size gave 1,248 and then 1,998 tokens/s), which hides any 5% difference. Here one
worker process per tree (`--src` folders, imported first on `sys.path`) loads the same run folders
(random weights of the `bench/decode.py` sizes, seed 0, each made by its tree's own
`bench/decode.py`, so each in its own config format; the greedy ids of both are compared) with the same options, and
the driver asks them in turn, A then B then B then A..., for the same greedy generation (16-token
prompt, `--tokens` new tokens, batch 1, 4, 16, 64). Per row it reports each tree's best tokens/s
and the median of the per-round ratios B/A (each ratio from two measurements seconds apart), which
is the number to read: < 0.95 means B is more than 5% slower.

data flow: driver --> worker(A), worker(B) (each: make_run --> run folder, load) (stdin/stdout JSON lines)
           --> per-round seconds --> Markdown table + one JSON line per row
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = r"""
import inspect, json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
import tinylm
try:
    from tinylm.run import load
except ImportError:  # trees before the run/ package
    from tinylm.rundir import load
from tinylm.generation import generate_ids
takes_step = "step" in inspect.signature(generate_ids).parameters
engines = {}
print(json.dumps({"ready": tinylm.__file__}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["cmd"] == "make":  # this tree's own bench/decode.py make_run: its config format, seed 0 weights
        sys.path.insert(0, str(__import__("pathlib").Path(sys.argv[1]).resolve().parent / "bench"))
        from decode import make_run
        out = {"run": str(make_run(__import__("pathlib").Path(cmd["folder"]), cmd["size"], False))}
    elif cmd["cmd"] == "load":
        run = load(cmd["run"], device="cpu", dtype=cmd["dtype"], quantize=cmd["quantize"], compile=cmd["compile"])
        run.ready()
        engines[cmd["name"]] = run
        out = {"ok": True}
    else:
        run = engines[cmd["name"]]
        g = torch.Generator().manual_seed(0)
        prompts = torch.randint(0, run.model.cfg.vocab_size, (cmd["batch"], cmd["prompt"]), generator=g).tolist()
        kw = {"step": run.step} if takes_step else {}
        if cmd.get("warm"):
            generate_ids(run.model, prompts, 4, temperature=0, dtype=run.dtype, device=run.device, **kw)
        start = time.perf_counter()
        ids = generate_ids(run.model, prompts, cmd["tokens"], temperature=0, dtype=run.dtype, device=run.device, **kw)
        out = {"seconds": time.perf_counter() - start, "ids": ids[0][:8]}
    print(json.dumps(out), flush=True)
"""

ENGINES = {  # name: (dtype, quantize, compile), as bench/decode.py's rows
    "float32": ("float32", "none", "off"),
    "bfloat16 weights": ("bfloat16", "none", "off"),
    "int8 weight-only": ("auto", "int8", "off"),
    "float32 compiled": ("float32", "none", "on"),
    "bfloat16 compiled": ("bfloat16", "none", "on"),
    "int8 compiled": ("auto", "int8", "on"),
    "default of tinylm sample": ("auto", "none", "auto"),
}


class Worker:
    def __init__(self, src: Path, threads: int):
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        env.pop("PYTHONPATH", None)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.src = src
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(src)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        ready = self.ask(None)
        if not ready["ready"].startswith(str(src.resolve())):
            raise SystemExit(f"{src}: the worker imported tinylm from {ready['ready']}; is another tinylm installed over it?")

    def ask(self, cmd: dict | None) -> dict:
        if cmd is not None:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the worker for {self.src} ended (see its error above)")
        return json.loads(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, action="append", required=True, help="a tree's src folder: A, then B")
    ap.add_argument("--sizes", nargs="+", default=["shakespeare-char", "tinystories-gpt2"])
    ap.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=6, help="paired rounds per row (default 6)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if len(args.src) != 2:
        raise SystemExit("give exactly two --src folders: A (before) and B (after)")
    work = Path(tempfile.mkdtemp(prefix="tinylm-ab-"))
    workers = [Worker(s, args.threads) for s in args.src]
    rows = []
    for size in args.sizes:
        runs = [w.ask({"cmd": "make", "folder": str(work / str(i)), "size": size})["run"] for i, w in enumerate(workers)]
        for engine in args.engines:
            dtype, quantize, compile_ = ENGINES[engine]
            name = f"{size}/{engine}"
            for w, run in zip(workers, runs):
                w.ask({"cmd": "load", "name": name, "run": run, "dtype": dtype, "quantize": quantize,
                       "compile": compile_})
            for batch in args.batches:
                q = {"cmd": "time", "name": name, "batch": batch, "prompt": args.prompt, "tokens": args.tokens}
                ids = [w.ask(dict(q, warm=True))["ids"] for w in workers]
                secs: list[list[float]] = [[], []]
                for r in range(args.rounds):
                    order = (0, 1) if r % 2 == 0 else (1, 0)
                    for i in order:
                        secs[i].append(workers[i].ask(q)["seconds"])
                tps = [[batch * args.tokens / s for s in ss] for ss in secs]
                ratio = statistics.median(b / a for a, b in zip(tps[0], tps[1]))
                row = {"bench": "ab-decode", "size": size, "engine": engine, "batch": batch,
                       "a_src": str(args.src[0]), "b_src": str(args.src[1]),
                       "a_best_tokens_per_s": round(max(tps[0]), 1), "b_best_tokens_per_s": round(max(tps[1]), 1),
                       "median_ratio_b_over_a": round(ratio, 3), "rounds": args.rounds,
                       "same_greedy_ids": ids[0] == ids[1]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n| size | engine | batch | A tokens/s (best) | B tokens/s (best) | B/A (median of {args.rounds} pairs) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['engine']} | {r['batch']} | {r['a_best_tokens_per_s']:,.1f} | "
              f"{r['b_best_tokens_per_s']:,.1f} | {r['median_ratio_b_over_a']:.3f} |")


if __name__ == "__main__":
    main()

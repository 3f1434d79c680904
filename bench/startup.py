"""Server start-up time: from launching `tinylm serve RUN --port P` until GET /v1/models answers 200.

    python bench/startup.py                                  # this tree's src, tinystories-gpt2 size, 5 rounds
    python bench/startup.py --src /tmp/before/src            # another tree's tinylm (same run directory format)
    python bench/startup.py --src A/src --src B/src          # several trees, rounds interleaved, one table
    python bench/startup.py --size tiny --rounds 1           # a quick check that it runs

The run directory has the tinystories-gpt2 preset's shape with random weights (`bench/serve.py`'s
`make_run`; `--size tiny`: 2 layers of width 64), written once by this tree's tinylm and served by each
`--src` in turn (`PYTHONPATH=SRC python -m tinylm serve RUN --port P --device D --dtype T`): the time
covers the interpreter start, the imports, loading the run and the server's own start-up (the first
generation's warm-up is not part of it). Prints a Markdown table (min and median seconds over
`--rounds`) and one JSON line per tree.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "src")]
from serve import make_run  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_up(src: Path, run: Path, args: argparse.Namespace) -> float:
    """Seconds from launching the server of `src` on `run` until /v1/models answers (the server is stopped)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    command = [sys.executable, "-m", "tinylm", "serve", str(run), "--port", str(port), "--device", args.device,
               "--dtype", args.dtype, "--model-name", "bench"]
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server of {src} exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1.0).status_code == 200:
                    return time.perf_counter() - start
            except httpx.TransportError:
                pass
            if time.perf_counter() - start > args.timeout:
                raise SystemExit(f"the server of {src} did not answer within {args.timeout} s")
            time.sleep(0.01)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, action="append", help="a tree's src folder (repeatable; default this tree's)")
    ap.add_argument("--size", choices=("tinystories-gpt2", "tiny"), default="tinystories-gpt2")
    ap.add_argument("--rounds", type=int, default=5, help="start-ups per tree (min and median reported)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=0, help="the server's torch threads (0 = torch's default)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds one start-up may take")
    args = ap.parse_args()
    sources = [s.resolve() for s in (args.src or [ROOT / "src"])]
    times: dict[Path, list[float]] = {s: [] for s in sources}
    with tempfile.TemporaryDirectory() as tmp:
        run, params = make_run(Path(tmp), args.size)
        for _ in range(args.rounds):
            for src in sources:  # interleaved, so a slow moment of the machine falls on every tree alike
                times[src].append(start_up(src, run, args))
    print(f"\n`tinylm serve` start-up until /v1/models answers, {args.size} size ({params / 1e6:.1f}M parameters), "
          f"{args.device} {args.dtype}, {args.rounds} rounds\n")
    print("| tree (src) | min s | median s |\n|---|---:|---:|")
    for src, ts in times.items():
        print(f"| {src} | {min(ts):.2f} | {statistics.median(ts):.2f} |")
    for src, ts in times.items():
        print(json.dumps({"src": str(src), "size": args.size, "device": args.device, "dtype": args.dtype,
                          "min_s": round(min(ts), 3), "median_s": round(statistics.median(ts), 3),
                          "seconds": [round(t, 3) for t in ts]}))


if __name__ == "__main__":
    main()

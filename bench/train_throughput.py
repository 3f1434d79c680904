"""Training throughput: tokens/s and MFU for float32 vs bfloat16, torch.compile off vs on.

    python bench/train_throughput.py                        # shakespeare-char preset, 200 steps each
    python bench/train_throughput.py --preset tiny-test --steps 100 --variants float32 bfloat16+compile
    python bench/train_throughput.py --device cuda --set model.n_layer=6 --set model.d_model=384

Each variant runs `tinylm train` (bundled Shakespeare, no evaluation until the end) and reports the
median tokens/s over the training rows after the first (warm-up, compilation), the achieved
TFLOP/s (6 x parameters + attention FLOPs per token) and MFU against the device's peak: for CPUs
the matrix-product rate measured here in the same precision (tinylm.runtime.measure_matmul_flops
on 2048 x 2048 matrices), for known GPUs the datasheet's dense bf16 peak. Prints one JSON line
per variant. Run nothing else on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from shakespeare_char import machine  # noqa: E402


def matmul_peak(device: str, dtype: str) -> float:
    from tinylm.runtime import DTYPES, measure_matmul_flops, resolve_device

    return measure_matmul_flops(resolve_device(device), DTYPES[dtype], n=2048, seconds=2.0)


def run_variant(variant: str, args: argparse.Namespace, work: Path) -> dict:
    dtype, *flags = variant.split("+")
    run_dir = work / variant
    cmd = [sys.executable, "-m", "tinylm", "train", "--preset", args.preset, "--out", str(run_dir), "--overwrite",
           "--device", args.device, "--dtype", dtype, "--max-steps", str(args.steps),
           "--set", "train.time_budget=0", "--set", f"train.eval_interval={args.steps}",
           "--set", "train.log_interval=10", *(a for s in args.sets for a in ("--set", s))]
    if "compile" in flags:
        cmd.append("--compile")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"variant": variant, "error": done.stderr.strip().splitlines()[-1]}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "tokens_per_s" in r][1:]
    tps = statistics.median(r["tokens_per_s"] for r in rows)
    tflops = statistics.median(r["tflops"] for r in rows)
    peak = matmul_peak(args.device, dtype) if args.device == "cpu" else None
    mfu = statistics.median(r["mfu"] for r in rows) if "mfu" in rows[0] else None
    return {"variant": variant, "tokens_per_s": round(tps), "tflops": round(tflops, 4),
            "matmul_peak_tflops": round(peak / 1e12, 3) if peak else None,
            "mfu_vs_measured_peak": round(tflops * 1e12 / peak, 4) if peak else mfu,
            "compile_fell_back": "torch.compile is not usable" in done.stderr,
            "command": " ".join(cmd[2:]).replace(str(run_dir), "RUN_DIR")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shakespeare-char")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", nargs="+",
                        default=["float32", "bfloat16", "float32+compile", "bfloat16+compile"])
    parser.add_argument("--set", action="append", default=[], dest="sets")
    args = parser.parse_args()
    print(json.dumps({"machine": machine()}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            print(json.dumps(run_variant(variant, args, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()

"""Train on tinyshakespeare's first 90% for a wall-clock budget, score the held-out last 10%.

    python bench/shakespeare_char.py                       # the shakespeare-char preset, 150 s
    python bench/shakespeare_char.py --budget 150 --preset shakespeare-char --set model.n_layer=6

Runs exactly what a user runs (`tinylm train --text ... --time-budget`, then `tinylm eval --text`
on the last 10% of the characters) and prints one JSON line: held-out loss, bits per byte, steps,
tokens, median tokens/s. TINYLM_SHARED_DATA points at the shared corpora (default: ../shared/data
beside the repository). Run nothing else on the machine meanwhile: the budget is wall-clock.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TINYLM_SHARED_DATA", ROOT.parent / "shared" / "data"))


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{os.cpu_count()} cores, {cpu}, torch {torch.__version__}"


def run(budget: float, preset: str, sets: list[str], work: Path, sample: bool = False) -> dict:
    corpus = SHARED / "tinyshakespeare" / "input.txt"
    text = corpus.read_text(encoding="utf-8")
    heldout = work / "heldout.txt"
    heldout.write_text(text[int(len(text) * 0.9):], encoding="utf-8")
    run_dir = work / "run"
    tinylm = [sys.executable, "-m", "tinylm"]
    train = [*tinylm, "train", "--preset", preset, "--text", str(corpus), "--out", str(run_dir), "--overwrite",
             "--time-budget", str(budget), *(a for s in sets for a in ("--set", s))]
    subprocess.run(train, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    evaluation = json.loads(subprocess.run([*tinylm, "eval", str(run_dir), "--text", str(heldout), "--json"],
                                           check=True, capture_output=True, text=True).stdout)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train_loss" in r]
    result = {
        "preset": preset, "set": sets, "budget_s": budget,
        "heldout_loss": round(evaluation["loss"], 4), "heldout_bpb": round(evaluation["bits_per_byte"], 4),
        "steps": train_rows[-1]["step"], "tokens": train_rows[-1]["tokens"],
        "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in train_rows[1:] or train_rows)),
        "machine": machine(),
        "command": " ".join(train[2:]).replace(str(SHARED), "$TINYLM_SHARED_DATA").replace(str(run_dir), "RUN_DIR"),
    }
    if sample:
        result["sample"] = subprocess.run([*tinylm, "sample", str(run_dir), "--prompt", "ROMEO:",
                                           "--max-new-tokens", "300", "--seed", "1"],
                                          check=True, capture_output=True, text=True).stdout
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=150.0)
    parser.add_argument("--preset", default="shakespeare-char")
    parser.add_argument("--set", action="append", default=[], dest="sets")
    parser.add_argument("--sample", action="store_true", help="also print a 300-character sample")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.budget, args.preset, args.sets, Path(tmp), args.sample)
    sample = result.pop("sample", None)
    print(json.dumps(result))
    if sample:
        print(sample)


if __name__ == "__main__":
    main()

"""DPO end to end on CPU: a rule the base does not follow, learned from preference pairs (BENCHMARKS.md "DPO").

    Tiny Shakespeare (first 300,000 characters) ─► `tinylm train` a tiny char model (the base)
    pairs: "say W" -> chosen "W amen" (the rule), rejected "W <another word>"; 300 training pairs on 30 words,
           40 held-out pairs on 10 other words
    `tinylm eval BASE --pairs held.jsonl`  ─► preference accuracy before (raw log-probabilities)
    `tinylm finetune BASE --method dpo`    ─► LoRA DPO (or --full)
    `tinylm eval DPO --pairs held.jsonl`   ─► accuracy and margin after (rewards against the base)
    greedy replies to the 10 held-out prompts, before and after: the share that ends with "amen"

Every step is the CLI a user runs (printed); the same rule as tests/test_dpo.py's end-to-end test.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

WORDS = ["lord", "king", "good", "fair", "love", "dear", "sire", "wife", "life", "hand", "song", "fire", "rose", "moon",
         "star", "gold", "time", "hope", "face", "hour", "duke", "maid", "lady", "word", "home", "land", "sea", "sun",
         "day", "eye", "man", "boy", "art", "heart", "night", "death", "grace", "queen", "sweet", "honour"]


def pairs(words: list[str], n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": f"say {w}", "chosen": f"{w} amen", "rejected": f"{w} {rng.choice([v for v in WORDS if v != w])}"}
            for w in (words[i % len(words)] for i in range(n))]


def tinylm(*args: str) -> str:
    cmd = [sys.executable, "-m", "tinylm", *args]
    print("$ tinylm " + " ".join(args), flush=True)
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def follows(run: Path, words: list[str]) -> float:
    import tinylm as lib

    r = lib.load(run, device="cpu", dtype="float32")
    replies = [r.chat([{"role": "user", "content": f"say {w}"}], template="plain", max_new_tokens=16, temperature=0)
               for w in words]
    return sum(x.strip().split("\n")[0].endswith("amen") for x in replies) / len(replies)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/tinylm-dpo-bench", help="a scratch folder (replaced)")
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--full", action="store_true", help="all weights instead of LoRA")
    args = ap.parse_args()
    work = Path(args.work)
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    text = work / "shakespeare.txt"
    text.write_text((Path(args.shared) / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:300_000],
                    encoding="utf-8")
    train_words, held_words = WORDS[:30], WORDS[30:]
    for name, rows in (("train.jsonl", pairs(train_words, 300, 0)), ("held.jsonl", pairs(held_words, 40, 1))):
        (work / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    t0 = time.perf_counter()
    tinylm("train", "--preset", "tiny-test", "--text", str(text), "--out", str(work / "base"), "--max-steps", "300",
           "--set", "model.context=64", "--set", "model.d_model=48", "--set", "train.batch_size=16",
           "--set", "train.eval_interval=300")
    t1 = time.perf_counter()
    before = json.loads(tinylm("eval", str(work / "base"), "--pairs", str(work / "held.jsonl"), "--dtype", "float32",
                               "--json").strip().splitlines()[-1])
    follows_before = follows(work / "base", held_words)
    t2 = time.perf_counter()
    tinylm("finetune", str(work / "base"), "--method", "dpo", *(["--full"] if args.full else []), "--data",
           str(work / "train.jsonl"), "--out", str(work / "dpo"), "--max-steps", "150", "--lr", "1e-2",
           "--set", "train.min_lr=1e-3", "--set", "train.eval_interval=150", "--set", "train.dtype=float32",
           "--set", "lora.dropout=0", "--lora-targets", "qkv,proj,fc,mlp_proj")
    t3 = time.perf_counter()
    after = json.loads(tinylm("eval", str(work / "dpo"), "--pairs", str(work / "held.jsonl"), "--dtype", "float32",
                              "--json").strip().splitlines()[-1])
    follows_after = follows(work / "dpo", held_words)
    print(f"\n| | preference accuracy (40 held-out pairs) | margin | greedy replies ending in \"amen\" (10 held-out "
          f"prompts) |\n|---|---:|---:|---:|\n| base | {before['accuracy']:.3f} | {before['margin']:.3f} | "
          f"{follows_before:.2f} |\n| after DPO ({'full' if args.full else 'LoRA'}, 150 steps) | "
          f"{after['accuracy']:.3f} | {after['margin']:.3f} | {follows_after:.2f} |")
    print(f"\nbase training {t1 - t0:.0f} s, DPO fine-tune {t3 - t2:.0f} s (each including start-up)")


if __name__ == "__main__":
    main()

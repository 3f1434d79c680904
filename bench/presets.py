"""The reference presets on this machine: a short run of each, evaluated, sampled, and the time
the full recipe would take projected from the measured speed.

    python bench/presets.py tinystories-gpt2 --minutes 10      # run, evaluate on valid-head.txt, sample
    python bench/presets.py tinystories-word                   # the recipe's 3 epochs (of train-head.txt here)
    python bench/presets.py tinystories-word --minutes 10 --epochs 0   # 10 minutes instead of 3 epochs
    python bench/presets.py shakespeare-char-tinygpt            # the whole recipe (5,000 steps)
    python bench/presets.py fineweb-edu-16m --throughput 40     # 40 steps of the full-size model, speed only
    python bench/presets.py wikitext103-51m --throughput 30 --device cuda

Data comes from ../shared/data (or $TINYLM_SHARED_DATA) through $TINYLM_DATA_DIR, as a user's
local copy would: TinyStories presets train on tinystories/train-head.txt and are evaluated on
valid-head.txt (linked into a temporary folder under the names of the dataset's real files);
shakespeare-char-tinygpt uses tinyshakespeare/input.txt. FineWeb-Edu and WikiText-103 are not
available here, so `--throughput` runs their full-size models on train-head.txt (the speed does
not depend on the text). On a CPU the recipe's batch is shrunk to what runs in minutes (see
CPU_SETTINGS); the model is never changed.

The projection: the recipe's training tokens (steps x tokens per step, or for epochs the
dataset's size in tokens, estimated from the tokens per byte of the text prepared here) at the
measured tokens/s; for a GPU that was not measured, at an assumed 30% of an H100's dense bf16
peak (989 TFLOP/s) with the model's training FLOPs per token (tinylm.model.GPT.flops_per_token).
Prints one JSON line; run nothing else on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from shakespeare_char import machine  # noqa: E402

SHARED = Path(os.environ.get("TINYLM_SHARED_DATA", ROOT.parent.parent / "shared" / "data"))
TINYSTORIES_V2_TRAIN_BYTES = 2.2e9  # TinyStoriesV2-GPT4-train.txt, about 2.2 GB (the catalog's size)
ASSUMED_GPU = ("H100", 989e12, 0.30)  # name, dense bf16 peak, assumed MFU for the projection
# what a CPU run shrinks (batch, warmup and validation sizes; never the model)
CPU_SETTINGS = {
    "tinystories-gpt2": ["train.grad_accum=1", "train.warmup_steps=20", "train.eval_interval=100",
                         "train.eval_tokens=65536"],
    "tinystories-word": ["train.eval_interval=200", "train.eval_tokens=65536"],
    "shakespeare-char-tinygpt": [],
    "fineweb-edu-16m": ["train.batch_tokens=4096", "train.hellaswag_items=0"],
    "wikitext103-51m": ["train.grad_accum=1", "train.batch_size=4"],
}
PROMPTS = {"tinystories-gpt2": "Once upon a time", "tinystories-word": "<sos> spot spot saw the",
           "shakespeare-char-tinygpt": "ROMEO:"}


def local_copy(name: str, folder: Path) -> list[str]:
    """Link the shared files into `folder` under the dataset's names; the data settings to use."""
    if name.startswith("tinystories"):
        (folder / "tinystories").mkdir(parents=True)
        for real, link in (("train-head.txt", "TinyStoriesV2-GPT4-train.txt"),
                           ("valid-head.txt", "TinyStoriesV2-GPT4-valid.txt")):
            (folder / "tinystories" / link).symlink_to(SHARED / "tinystories" / real)
        return []
    if name == "shakespeare-char-tinygpt":
        (folder / "tinyshakespeare").mkdir(parents=True)
        (folder / "tinyshakespeare" / "input.txt").symlink_to(SHARED / "tinyshakespeare" / "input.txt")
        return []
    # a stand-in text for a speed measurement of a dataset not available here
    return [f"data.source={SHARED / 'tinystories' / 'train-head.txt'}", "data.max_tokens=0",
            "data.source_splits=true", "data.split=tail", "data.val_fraction=0.1"]


def tinylm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "tinylm", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"tinylm {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done


def recipe_tokens(name: str, bytes_per_token: float) -> float:
    """Training tokens of the full recipe, unchanged."""
    from tinylm.config import load_preset

    cfg = load_preset(name)
    t = cfg.train
    per_step = t.batch_tokens or t.batch_size * t.grad_accum * cfg.seq_len
    if t.epochs:
        assert cfg.data.source == "tinystories", "epochs are projected for TinyStories only"
        return t.epochs * TINYSTORIES_V2_TRAIN_BYTES / bytes_per_token
    return t.max_steps * per_step


def flops_per_token(name: str) -> float:
    import torch

    from tinylm.config import load_preset
    from tinylm.model import GPT
    from tinylm.cli.presets import recipe

    cfg = load_preset(name)
    cfg.model.vocab_size = recipe(name).vocab
    with torch.device("meta"):
        return GPT(cfg.model).flops_per_token(cfg.seq_len)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of a run")
    parser.add_argument("--throughput", type=int, default=0, metavar="STEPS",
                        help="only measure speed over this many steps (no evaluation)")
    parser.add_argument("--epochs", type=float, default=None,
                        help="override train.epochs (0: train for the whole --minutes instead)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="", help="keep the run here (default: a temporary folder)")
    args = parser.parse_args()
    name = args.preset
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TINYLM_DATA_DIR": str(Path(tmp) / "copy")}
        data_sets = local_copy(name, Path(tmp) / "copy")
        run = Path(args.out) if args.out else Path(tmp) / "run"
        sets = [*data_sets, *(CPU_SETTINGS[name] if args.device == "cpu" else [])]
        if args.epochs is not None:
            sets.append(f"train.epochs={args.epochs}")
        limits = (["--max-steps", str(args.throughput), "--set", f"train.eval_interval={args.throughput}",
                   "--set", "train.eval_tokens=4096", "--set", "train.log_interval=2"] if args.throughput else
                  ["--time-budget", str(args.minutes * 60)] if name != "shakespeare-char-tinygpt" else [])
        command = ["train", "--preset", name, "--device", args.device, *limits,
                   *(a for s in sets for a in ("--set", s))]
        started = time.time()
        tinylm(*command, "--out", str(run), "--overwrite", env=env)
        wall = time.time() - started
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        speed = statistics.median(r["tokens_per_s"] for r in rows[1:] if "tokens_per_s" in r)  # after warm-up
        cfg = json.loads((run / "config.json").read_text())
        from tinylm.config import RunConfig
        from tinylm.data import read_meta, resolve_data_dir

        os.environ["TINYLM_DATA_DIR"] = env["TINYLM_DATA_DIR"]
        meta = read_meta(resolve_data_dir(RunConfig.from_dict(cfg).data)[0])
        bytes_per_token = meta["splits"]["train"]["bytes"] / meta["splits"]["train"]["tokens"]
        last = rows[-1]
        result = {"preset": name, "machine": machine(), "device": args.device, "date": time.strftime("%Y-%m-%d"),
                  "command": "tinylm " + " ".join(command), "wall_s": round(wall), "steps": last["step"],
                  "train_tokens": last.get("tokens"), "tokens_per_s": round(speed),
                  "val_loss_in_training": last.get("val_loss")}
        total, fpt = recipe_tokens(name, bytes_per_token), flops_per_token(name)
        gpu, peak, mfu = ASSUMED_GPU
        projected = f"recipe_hours_projected_{gpu}_{int(mfu * 100)}pct_mfu"
        result.update({"recipe_tokens": round(total), "flops_per_token": round(fpt),
                       "recipe_hours_at_measured_speed": round(total / speed / 3600, 1),
                       projected: round(total * fpt / (peak * mfu) / 3600, 2)})
        if not args.throughput:
            eval_args = ["--dataset", "tinystories"] if name.startswith("tinystories") else []
            scored = json.loads(tinylm("eval", str(run), *eval_args, "--device", args.device, "--json",
                                       env=env).stdout.strip().splitlines()[-1])
            result["eval"] = {k: round(scored[k], 4) for k in ("loss", "perplexity", "bits_per_byte")}
            result["eval"]["tokens"] = scored["tokens"]
            result["eval"]["on"] = "valid-head.txt" if eval_args else "the run's validation split"
            prompt = PROMPTS[name]
            sample = tinylm("sample", str(run), "--prompt", prompt, "--max-new-tokens", "60", "--seed", "0",
                            "--temperature", "0.8", "--top-k", "40", "--device", args.device, env=env).stdout
            result["sample"] = sample.strip()
            if name == "tinystories-word":
                beams = tinylm("sample", str(run), "--prompt", prompt, "--beams", "4", "--max-new-tokens", "30",
                               "--device", args.device, env=env).stdout
                result["sample_beam4"] = beams.strip()
        print(json.dumps(result, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()

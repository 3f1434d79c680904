"""Fine-tuning cost and effect: LoRA (r = 8 on qkv) vs full fine-tuning.

    python bench/finetune.py                                  # the tinystories-gpt2 model size, 30 steps each
    python bench/finetune.py --size tiny --steps 5 --quality-steps 60 --base-steps 100   # a quick check

Cost (one JSON line per method): a base run of the tinystories-gpt2 preset's model (30M parameters, GPT-2
tokenizer, context 128; random weights: cost does not depend on them) is fine-tuned with `tinylm finetune`'s
code on the Shakespeare instruction set of the tests (`tinylm.data.finetune.shakespeare_instructions`), each
method in a fresh process: trainable parameters, optimizer-state bytes (every tensor the optimizer keeps),
peak RSS of the process, and the median time of an optimizer step (after the first two) at batch size 8.

Effect (one JSON line per method): a character-level base (the tiny-test preset trained on the bundled
Shakespeare for --base-steps, or --quality-base RUN_DIR) is fine-tuned the same way; the validation loss on
the response tokens of the instruction set's validation split before (the base) and after. Run nothing
else on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from shakespeare_char import machine  # noqa: E402

SIZES = {"tinystories-gpt2": {}, "tiny": {"n_layer": 2, "n_head": 2, "d_model": 64}}


def write_instructions(path: Path, limit: int) -> Path:
    from tinylm.data.records import shakespeare_instructions

    path.write_text("".join(json.dumps(r) + "\n" for r in shakespeare_instructions(limit)), encoding="utf-8")
    return path


def random_base(out: Path, size: str) -> Path:
    """A run directory with the tinystories-gpt2 preset's model (or a smaller one), GPT-2 tokenizer, random weights."""
    import torch

    from tinylm.config import load_preset
    from tinylm.model import GPT
    from tinylm.run import MODEL_FILE, save_weights, write_config
    from tinylm.tokenizers import GPT2Tokenizer

    cfg = load_preset("tinystories-gpt2")
    for key, value in SIZES[size].items():
        setattr(cfg.model, key, value)
    tokenizer = GPT2Tokenizer()
    cfg.model.vocab_size = cfg.model.embedding_rows(tokenizer.vocab_size)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out)
    save_weights(model, out / MODEL_FILE, {"step": 0, "tokenizer_fingerprint": tokenizer.fingerprint()})
    write_config(out, cfg)
    return out


def worker(args: argparse.Namespace) -> None:
    """One fine-tune in this process; prints its cost as JSON."""
    from tinylm.training import train
    from tinylm.training import trainer as trainer_module
    from tinylm.training.finetune import finetune_config

    cfg = finetune_config(args.base, args.data, args.method)
    cfg.train.out_dir = args.out
    for key, value in {"epochs": 0.0, "max_steps": args.steps, "eval_interval": args.steps, "eval_tokens": 4096,
                       "batch_size": 8, "log_interval": 1, "device": "cpu", "dtype": args.dtype,
                       "lr": args.lr or cfg.train.lr, "min_lr": (args.lr or cfg.train.lr) / 10}.items():
        setattr(cfg.train, key, value)
    cfg.lora.r, cfg.lora.targets = 8, "qkv"
    seen: dict = {"times": []}
    real_step, real_fit = trainer_module.Trainer.train_step, trainer_module.Trainer.fit

    def timed_step(self, lr):
        start = time.perf_counter()
        out = real_step(self, lr)
        seen["times"].append(time.perf_counter() - start)
        return out

    def fit(self, resume=False):
        seen["trainer"] = self
        return real_fit(self, resume)

    trainer_module.Trainer.train_step, trainer_module.Trainer.fit = timed_step, fit
    result = train(cfg, overwrite=True)
    trainer = seen["trainer"]
    state_bytes = sum(t.numel() * t.element_size() for o in trainer.optimizers for s in o.state.values()
                      for t in s.values() if hasattr(t, "numel"))
    print(json.dumps({
        "method": args.method,
        "base_params": sum(p.numel() for n, p in trainer.model.named_parameters() if "lora_" not in n),
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "optimizer_state_bytes": state_bytes,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "step_seconds_median": round(statistics.median(seen["times"][2:] or seen["times"]), 4),
        "steps": result.step, "dtype": str(trainer.dtype).removeprefix("torch."),
        "val_loss": round(result.val_loss, 4)}), flush=True)


def run_worker(method: str, base: Path, data: Path, out: Path, steps: int, dtype: str, lr: float = 0.0) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--base", str(base), "--data", str(data), "--out", str(out),
           "--steps", str(steps), "--dtype", dtype, "--lr", str(lr)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"method": method, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def quality(args: argparse.Namespace, work: Path, data: Path) -> None:
    """Validation loss on response tokens before and after each method, on a character-level base."""
    import tinylm
    from tinylm.config import load_preset
    from tinylm.data.finetune import run_examples
    from tinylm.evaluation.perplexity import score_examples
    from tinylm.training import train

    base = Path(args.quality_base) if args.quality_base else work / "char-base"
    if not args.quality_base:
        cfg = load_preset("tiny-test")
        cfg.model.context, cfg.train.out_dir, cfg.train.max_steps = 128, str(base), args.base_steps
        cfg.train.eval_interval = args.base_steps
        train(cfg)
    for method in ("lora", "full"):
        out = work / f"quality-{method}"
        row = run_worker(method, base, data, out, args.quality_steps, "float32",
                         lr=1e-2 if method == "lora" else 3e-3)
        if "error" in row:
            print(json.dumps({"quality": method, **row}), flush=True)
            continue
        after = tinylm.load(out, device="cpu", dtype="float32")
        examples = run_examples(after.config, after.tokenizer, quiet=True).val
        before_nats, n = score_examples(tinylm.load(base, device="cpu", dtype="float32").model, examples)
        after_nats, _ = score_examples(after.model, examples)
        print(json.dumps({"quality": method, "base": str(base), "steps": args.quality_steps,
                          "val_examples": len(examples), "template": after.config.finetune.template,
                          "val_loss_before": round(before_nats / n, 4), "val_loss_after": round(after_nats / n, 4)}),
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="tinystories-gpt2")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per method (cost)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--records", type=int, default=2000, help="instruction records used")
    parser.add_argument("--quality-steps", type=int, default=300)
    parser.add_argument("--base-steps", type=int, default=1500, help="steps of the character-level base")
    parser.add_argument("--quality-base", default="", help="a character-level base run to use instead")
    parser.add_argument("--worker", choices=("lora", "full"), help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(argparse.Namespace(**{**vars(args), "method": args.worker}))
        return
    print(json.dumps({"machine": machine()}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_instructions(work / "speakers.jsonl", args.records)
        base = random_base(work / "base", args.size)
        for method in ("lora", "full"):
            print(json.dumps({"size": args.size, **run_worker(method, base, data, work / method, args.steps,
                                                              args.dtype)}), flush=True)
        quality(args, work, data)


if __name__ == "__main__":
    main()

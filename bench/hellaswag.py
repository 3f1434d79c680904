"""Benchmark: HellaSwag validation (all 10,042 items) with a run's model on this machine.

    python bench/hellaswag.py RUN_DIR [--file PATH] [--limit N] [--batch-size 32] [--dtype auto]

`--untrained` instead of RUN_DIR scores a freshly initialised tiny-test model (context 128)
with the GPT-2 tokenizer, which must score about 25%. Prints one
JSON line with accuracy, normalised accuracy, items and seconds; BENCHMARKS.md records results.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

SHARED = Path(os.environ.get("TINYLM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("--untrained", action="store_true", help="a fresh tiny-test model with the gpt2 tokenizer")
    parser.add_argument("--file", default=str(SHARED / "hellaswag" / "hellaswag_val.jsonl"))
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()

    import torch

    from tinylm.evaluation.multiple_choice import read_items, score_items, subsample

    items = subsample(read_items(args.file, "hellaswag"), args.limit, 0)
    if args.untrained:
        from tinylm.config import load_preset
        from tinylm.model import GPT
        from tinylm.tokenizers import GPT2Tokenizer

        cfg = load_preset("tiny-test")
        cfg.model.vocab_size, cfg.model.context = 50257, 128  # HellaSwag items fit 128 GPT-2 tokens
        torch.manual_seed(0)
        model, tokenizer, device, dtype, what = GPT(cfg.model), GPT2Tokenizer(), torch.device("cpu"), torch.float32, \
            "untrained tiny-test, context 128 (gpt2 tokenizer)"
    else:
        import tinylm

        run = tinylm.load(args.run_dir, dtype=args.dtype)
        model, tokenizer, device, dtype, what = run.model, run.tokenizer, run.device, run.dtype, args.run_dir
    start = time.perf_counter()
    result = score_items(model, tokenizer, items, "hellaswag", batch_size=args.batch_size, device=device,
                         dtype=dtype, show_progress=True)
    print(json.dumps({"model": what, "params": model.num_params(), "context": model.cfg.context,
                      "dtype": str(dtype).removeprefix("torch."), **result.to_dict(),
                      "seconds": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()

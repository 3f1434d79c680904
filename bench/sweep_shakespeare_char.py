"""The sweep behind the shakespeare-char preset: shapes and learning rates under one wall-clock budget.

    python bench/sweep_shakespeare_char.py [--budget 150] [--only NAME ...]

Each variant is `tinylm train --preset shakespeare-char --set ...` on tinyshakespeare's first 90%,
scored on the last 10% (see shakespeare_char.py). Prints a markdown table row per variant.
Takes about 3 minutes a variant; run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from shakespeare_char import run


def shape(layers: int, heads: int, width: int, context: int, batch: int, lr: float) -> list[str]:
    return [f"model.n_layer={layers}", f"model.n_head={heads}", f"model.d_model={width}",
            f"model.context={context}", f"train.batch_size={batch}", f"train.lr={lr}",
            f"train.min_lr={lr / 10}", "train.warmup_steps=50"]


VARIANTS = {  # name -> --set overrides on top of the shakespeare-char preset
    "first guess: 6L 256w ctx256 b32 lr2e-3": shape(6, 4, 256, 256, 32, 2e-3) + ["train.warmup_steps=100"],
    "nanoGPT CPU shape: 4L 128w 4h ctx64 b12 lr1e-3": shape(4, 4, 128, 64, 12, 1e-3) + ["train.warmup_steps=100"],
    "6L 192w 3h ctx128 b16 lr2e-3": shape(6, 3, 192, 128, 16, 2e-3),
    "6L 256w ctx64 b32 lr2e-3": shape(6, 4, 256, 64, 32, 2e-3),
    "4L 256w ctx128 b16 lr2e-3": shape(4, 4, 256, 128, 16, 2e-3),
    "4L 192w ctx128 b16 lr2e-3": shape(4, 4, 192, 128, 16, 2e-3),
    "4L 192w ctx128 b16 lr2e-3, float32": shape(4, 4, 192, 128, 16, 2e-3) + ["train.dtype=float32"],
    "4L 192w ctx128 b16 lr3e-3": shape(4, 4, 192, 128, 16, 3e-3),
    "4L 192w 3h ctx128 b16 lr2e-3": shape(4, 3, 192, 128, 16, 2e-3),
    "4L 192w ctx64 b32 lr2e-3": shape(4, 4, 192, 64, 32, 2e-3),
    "3L 192w ctx128 b16 lr2e-3": shape(3, 4, 192, 128, 16, 2e-3),
    "6L 128w 2h ctx128 b16 lr3e-3": shape(6, 2, 128, 128, 16, 3e-3),
    "4L 128w 2h ctx128 b16 lr3e-3": shape(4, 2, 128, 128, 16, 3e-3),
    "4L 128w 2h ctx128 b32 lr3e-3": shape(4, 2, 128, 128, 32, 3e-3),
    "4L 128w 2h ctx64 b32 lr3e-3": shape(4, 2, 128, 64, 32, 3e-3),
    "4L 128w 2h ctx256 b8 lr3e-3": shape(4, 2, 128, 256, 8, 3e-3),
    "4L 128w 2h ctx128 b16 lr5e-3": shape(4, 2, 128, 128, 16, 5e-3),
    "3L 128w 2h ctx128 b16 lr3e-3": shape(3, 2, 128, 128, 16, 3e-3),
    "3L 160w 2h ctx128 b16 lr3e-3": shape(3, 2, 160, 128, 16, 3e-3),
    "3L 128w 2h ctx256 b8 lr3e-3": shape(3, 2, 128, 256, 8, 3e-3),
    "2L 128w 2h ctx128 b16 lr3e-3": shape(2, 2, 128, 128, 16, 3e-3),
    "2L 192w 3h ctx128 b16 lr3e-3 (the preset)": [],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=150.0)
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = parser.parse_args()
    print("| variant | held-out loss | bits/byte | steps | tokens | tokens/s |")
    print("|---|---|---|---|---|---|")
    for name, sets in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            r = run(args.budget, "shakespeare-char", sets, Path(tmp))
        print(f"| {name} | {r['heldout_loss']:.4f} | {r['heldout_bpb']:.4f} | {r['steps']:,} | "
              f"{r['tokens']:,} | {r['tokens_per_s']:,} |", flush=True)


if __name__ == "__main__":
    main()

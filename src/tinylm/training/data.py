"""The trainer's data: what pre-training and fine-tuning train and validate on, behind one protocol.

    prepared data dir ─► WindowData: loader (random windows | permutation) + validation windows (score_tokens)
    fine-tuning examples (data/examples.py) ─► ExampleData: padded batches of whole examples + validation on
                                               response tokens (score_examples)
    both: loader(seq_len, micro, seed, sampling, shard), steps_per_epoch(plan), validation(model, ...) ->
    (nats, tokens), describe()
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence, Sized
from typing import Any

import torch

from tinylm.data.examples import ExampleBatches, Examples
from tinylm.data.loader import make_loader
from tinylm.data.prepare import load_split, read_meta
from tinylm.evaluation.perplexity import score_examples, score_tokens
from tinylm.training.batch import BatchPlan


class WindowData:
    """Token windows of a prepared data directory: what pre-training (and continued pre-training) trains
    and validates on."""

    def __init__(self, data_dir: str | Path):
        self.dir = Path(data_dir)
        meta = read_meta(self.dir)
        self.splits = meta["splits"]
        self.source_sha256 = str(meta.get("source", {}).get("sha256", ""))  # recorded in checkpoints
        self.train = load_split(self.dir, "train")
        self.val = load_split(self.dir, "val")

    def loader(self, seq_len: int, micro: int, seed: int, sampling: str, shard: tuple[int, int]):
        return make_loader(self.train, seq_len, micro, seed, sampling=sampling, shard=shard)

    def steps_per_epoch(self, plan: BatchPlan) -> float:
        return len(self.train) / plan.tokens

    def validation(self, model: torch.nn.Module, *, seq_len: int, batch_size: int, device: torch.device,
                   dtype: torch.dtype, max_tokens: int, shard: tuple[int, int]) -> tuple[float, int]:
        """(total nats, tokens scored) on this process's share of the validation windows."""
        max_windows = max(1, max_tokens // seq_len) if max_tokens else 0
        return score_tokens(model, self.val, context=seq_len, batch_size=batch_size, device=device, dtype=dtype,
                            max_windows=max_windows, shard=shard)

    def describe(self) -> str:
        return f"{self.splits['train']['tokens']:,} train / {self.splits['val']['tokens']:,} val tokens, {self.dir}"


def quick_share(records: Sequence[Sized], max_tokens: int) -> Sequence[Sized]:
    """The validation records a quick periodic pass scores: the first ones up to `max_tokens` tokens (at least
    one); all of them when max_tokens is 0."""
    if not max_tokens:
        return records
    total, n = 0, 0
    while n < len(records) and total < max_tokens:
        total += len(records[n])
        n += 1
    return records[:max(n, 1)]


class ExampleData:
    """Instruction or chat examples for the trainer: training batches and validation on response tokens."""

    def __init__(self, examples: Examples):
        self.examples = examples
        self.train, self.val = examples.train, examples.val

    def loader(self, seq_len: int, micro: int, seed: int, sampling: str, shard: tuple[int, int]) -> ExampleBatches:
        return ExampleBatches(self.train, micro, seed, shard)

    def steps_per_epoch(self, plan: Any) -> float:
        return len(self.train) / (plan.micro * plan.accum * plan.processes)

    def validation(self, model: torch.nn.Module, *, seq_len: int, batch_size: int, device: torch.device,
                   dtype: torch.dtype, max_tokens: int, shard: tuple[int, int]) -> tuple[float, int]:
        return score_examples(model, quick_share(self.val, max_tokens), batch_size=batch_size, device=device,
                              dtype=dtype, shard=shard)

    def describe(self) -> str:
        e = self.examples
        tokens = sum(len(x) for x in self.train)
        return (f"{len(self.train):,} train / {len(self.val):,} val {e.fmt} examples ({tokens:,} train tokens), "
                f"template {e.template}, {e.name}")

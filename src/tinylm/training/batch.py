"""How one optimizer step's global batch is cut into micro-batches, per process.

    train.batch_tokens (or batch_size x grad_accum x seq_len per process) ─► plan_batch ─► BatchPlan:
    `accum` micro-batches of `micro` sequences in each of `processes` processes; settings that do not
    divide are one-line errors before any work; batch_size 0 picks the largest micro-batch that fits
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from tinylm.config import RunConfig
from tinylm.errors import ConfigError


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's global batch is cut: `accum` micro-batches of `micro` sequences in
    each of `processes` processes, `tokens` tokens in all."""

    micro: int
    accum: int
    processes: int
    context: int

    @property
    def tokens(self) -> int:
        return self.micro * self.accum * self.processes * self.context


CPU_MICRO_TOKENS = 8192  # the automatic micro-batch on CPUs: at most this many tokens


def _divisors(n: int, most: int) -> Iterator[int]:
    """The divisors of `n` not above `most`, largest first: O(most) however large `n` is (a huge
    train.batch_tokens gives a huge n; listing all its divisors would never end)."""
    return (d for d in range(min(n, most), 0, -1) if n % d == 0)


def plan_batch(cfg: RunConfig, processes: int, fits: Callable[[int], bool] | None = None,
               most: int | None = None) -> BatchPlan:
    """The batch plan for `train.batch_tokens` (or batch_size x grad_accum x seq_len) over
    `processes`, with micro-batches of `train.batch_size` sequences, or with batch_size 0 the
    largest divisor that `fits` (a trial forward and backward; None: at most 8,192 tokens) among
    those of at most `most` sequences (None: as many as 8,192 tokens hold without `fits`, else
    any; the trainer bounds it by the device's memory)."""
    t, context = cfg.train, cfg.seq_len
    if t.batch_tokens == 0:
        return BatchPlan(t.batch_size, t.grad_accum, processes, context)  # the global batch grows with processes
    if t.batch_tokens % (context * processes):
        raise ConfigError(f"train.batch_tokens {t.batch_tokens:,} is not a whole number of sequences of "
                          f"{context} tokens (train.seq_len or model.context) for each of {processes} process(es); "
                          f"use a multiple of {context * processes:,}")
    sequences = t.batch_tokens // (context * processes)  # per process and step
    if t.batch_size:
        if sequences % t.batch_size:
            raise ConfigError(f"train.batch_tokens {t.batch_tokens:,} is not divisible by the micro-batch tokens "
                              f"(batch_size {t.batch_size} x context {context} x {processes} process(es) = "
                              f"{t.batch_size * context * processes:,}); set train.batch_size to a divisor of "
                              f"{sequences} (or 0 to choose automatically)")
        return BatchPlan(t.batch_size, sequences // t.batch_size, processes, context)
    if fits is None:
        fits, most = (lambda micro: True), CPU_MICRO_TOKENS // context
    micro = next((d for d in _divisors(sequences, sequences if most is None else most) if fits(d)), None)
    if micro is None:
        raise ConfigError(f"not even a micro-batch of 1 sequence of {context} tokens fits on this device; "
                          "lower train.seq_len or the model size")
    return BatchPlan(micro, sequences // micro, processes, context)

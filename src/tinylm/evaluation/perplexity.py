"""Language-modelling quality: mean loss, perplexity and bits per byte.

Tokens are scored in windows of `context + 1` tokens (the inputs and their next-token targets)
that start every `stride` tokens, the "perplexity of fixed-length models" method:

- stride = context (the default, `stride=0`): non-overlapping windows; every token but the first
  is predicted exactly once, from 1 to `context` tokens of history.
- 0 < stride < context: overlapping windows; the first window scores all its targets and each
  later one only those the previous windows did not reach (its last `stride`, fewer in the last
  window), so every token but the first is still scored exactly once, and all but the first
  `context` of them from at least `context + 1 - stride` tokens of history. Costs about
  `context / stride` times as much compute; the loss is lower or equal (more history per token).

Bits per byte divides the total loss (in bits) by the UTF-8 bytes of the scored text, which
makes models with different tokenizers comparable. `score_examples` scores fine-tuning examples on their
labelled (response) tokens, in padded batches: a fine-tune's validation loss.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import groupby
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tinylm.console import progress
from tinylm.data.examples import IGNORE, Example, pad_batch
from tinylm.errors import ConfigError
from tinylm.runtime import autocast, autocast_for


@dataclass
class LMEval:
    loss: float  # mean negative log-likelihood, nats per token
    perplexity: float
    bits_per_byte: float | None
    tokens: int  # tokens scored
    bytes: int | None  # UTF-8 bytes of the scored text
    stride: int | None = None  # tokens between window starts (the context: non-overlapping windows)

    def to_dict(self) -> dict:
        return asdict(self)


def scoring_windows(n_tokens: int, context: int, stride: int = 0,
                    max_windows: int = 0) -> list[tuple[int, int, int]]:
    """(start, length, scored) of the windows that score tokens 1..n-1 once each: windows of
    up to `context + 1` tokens start every `stride` tokens (0 = `context`: non-overlapping), and
    each scores its last `scored` targets, those not scored by an earlier window.

    With `max_windows`, an evenly spaced subset of them (for quick periodic validation)."""
    stride = stride or context
    if not 0 < stride <= context:
        raise ConfigError(f"the eval stride must be between 0 and the model's context ({context}), got {stride}")
    windows, scored_to = [], 1  # tokens before `scored_to` are scored already (token 0 never is)
    for start in range(0, n_tokens - 1, stride):
        stop = min(start + context + 1, n_tokens)
        windows.append((start, stop - start, stop - scored_to))
        scored_to = stop
        if stop == n_tokens:
            break
    if max_windows and len(windows) > max_windows:
        picks = np.linspace(0, len(windows) - 1, max_windows).round().astype(int)
        windows = [windows[i] for i in picks]
    return windows


@torch.no_grad()
def score_tokens(model: torch.nn.Module, tokens: np.ndarray, *, context: int = 0, batch_size: int = 16,
                 device: torch.device | None = None, dtype: torch.dtype = torch.float32,
                 max_windows: int = 0, stride: int = 0, show_progress: bool = False,
                 shard: tuple[int, int] = (0, 1)) -> tuple[float, int]:
    """Total negative log-likelihood (nats) of tokens[1:] and how many tokens were scored, in
    windows of `context` tokens (0 = the model's context) starting every `stride` tokens (0 =
    the window: non-overlapping). With `shard` = (rank, world_size), only every world_size-th
    window from `rank` (sum the shards)."""
    context = context or model.cfg.context
    device = device or torch.device("cpu")
    rank, world_size = shard
    windows = scoring_windows(len(tokens), context, stride, max_windows)[rank::world_size]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    bar = progress() if show_progress else None
    task = bar.add_task("eval", total=len(windows)) if bar else None
    try:
        if bar:
            bar.start()
        # windows of equal shape batch together (the first and last usually stand alone)
        for (length, scored), group in groupby(windows, key=lambda w: w[1:]):
            starts = [s for s, _, _ in group]
            for i in range(0, len(starts), batch_size):
                chunk = starts[i:i + batch_size]
                batch = torch.from_numpy(np.stack([tokens[s:s + length] for s in chunk]).astype(np.int64))
                batch = batch.to(device)
                with autocast_for(model, device, dtype):
                    logits, _ = model(batch[:, :-1])
                targets = batch[:, length - scored:]
                nll = F.cross_entropy(logits[:, -scored:].float().flatten(0, 1), targets.flatten(), reduction="sum")
                total += nll.item()
                count += targets.numel()
                if bar:
                    bar.advance(task, len(chunk))
    finally:
        if bar:
            bar.stop()
        model.train(was_training)
    return total, count


@torch.no_grad()
def score_examples(model: torch.nn.Module, examples: Sequence[Example], *, batch_size: int = 16,
                   device: torch.device | None = None, dtype: torch.dtype = torch.float32,
                   shard: tuple[int, int] = (0, 1)) -> tuple[float, int]:
    """Total negative log-likelihood (nats) of the examples' labelled targets (response tokens, or every
    token with train_on_prompt) and how many there were; examples sorted by length into padded batches.
    With `shard` = (rank, world_size), only every world_size-th example from `rank` (sum the shards)."""
    device = device or torch.device("cpu")
    rank, world_size = shard
    mine = sorted(examples[rank::world_size], key=len)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, len(mine), batch_size):
            x, y = pad_batch(mine[i:i + batch_size])
            x, y = x.to(device), y.to(device)
            with autocast(device, dtype):
                logits, _ = model(x)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE,
                                     reduction="sum").item()
            count += int((y != IGNORE).sum())
    finally:
        model.train(was_training)
    return total, count


def summarize(nats: float, tokens: int, scored_bytes: int | None, stride: int | None = None) -> LMEval:
    loss = nats / max(tokens, 1)
    bpb = nats / (math.log(2) * scored_bytes) if scored_bytes else None
    return LMEval(loss=loss, perplexity=math.exp(min(loss, 700.0)), bits_per_byte=bpb,
                  tokens=tokens, bytes=scored_bytes, stride=stride)

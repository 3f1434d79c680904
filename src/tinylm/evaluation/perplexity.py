"""Language-modelling quality: mean loss, perplexity and bits per byte.

The tokens are scored in non-overlapping windows of the model's context (stride = context),
so every token but the first is predicted exactly once, from at least 0 and at most
`context - 1` tokens of history. Bits per byte divides the total loss (in bits) by the UTF-8
bytes of the scored text, which makes models with different tokenizers comparable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import groupby

import numpy as np
import torch
import torch.nn.functional as F

from tinylm.console import progress
from tinylm.data.loader import eval_windows
from tinylm.runtime import autocast


@dataclass
class LMEval:
    loss: float  # mean negative log-likelihood, nats per token
    perplexity: float
    bits_per_byte: float | None
    tokens: int  # tokens scored
    bytes: int | None  # UTF-8 bytes of the scored text

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def score_tokens(model: torch.nn.Module, tokens: np.ndarray, *, batch_size: int = 16,
                 device: torch.device | None = None, dtype: torch.dtype = torch.float32,
                 max_windows: int = 0, show_progress: bool = False) -> tuple[float, int]:
    """Total negative log-likelihood (nats) of tokens[1:] and how many tokens were scored."""
    context = model.cfg.context
    device = device or torch.device("cpu")
    windows = eval_windows(len(tokens), context, max_windows)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    bar = progress() if show_progress else None
    task = bar.add_task("eval", total=len(windows)) if bar else None
    try:
        if bar:
            bar.start()
        # windows of equal length batch together (only the last one is usually shorter)
        for length, group in groupby(windows, key=lambda w: w[1]):
            starts = [s for s, _ in group]
            for i in range(0, len(starts), batch_size):
                chunk = starts[i:i + batch_size]
                batch = torch.from_numpy(np.stack([tokens[s:s + length] for s in chunk]).astype(np.int64))
                batch = batch.to(device)
                with autocast(device, dtype):
                    logits, _ = model(batch[:, :-1])
                nll = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
                total += nll.item()
                count += batch[:, 1:].numel()
                if bar:
                    bar.advance(task, len(chunk))
    finally:
        if bar:
            bar.stop()
        model.train(was_training)
    return total, count


def summarize(nats: float, tokens: int, scored_bytes: int | None) -> LMEval:
    loss = nats / max(tokens, 1)
    bpb = nats / (math.log(2) * scored_bytes) if scored_bytes else None
    return LMEval(loss=loss, perplexity=math.exp(min(loss, 700.0)), bits_per_byte=bpb,
                  tokens=tokens, bytes=scored_bytes)

"""Autoregressive sampling: temperature, top-k, greedy, seeded; streaming text.

Without a KV cache each new token runs the model over the last `context` tokens of the
sequence, so generation may run past the context length (the window slides).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch

from tinylm.runtime import autocast


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token for each row of `logits` (B, vocab). temperature <= 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_ids(model: torch.nn.Module, prompt: Sequence[int], max_new_tokens: int, *,
                 temperature: float = 0.8, top_k: int = 0, seed: int | None = None,
                 stop_ids: Iterable[int] = (), device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32, vocab_size: int | None = None) -> Iterator[int]:
    """Yield up to `max_new_tokens` new token ids after `prompt` (stops after a stop id).
    `vocab_size` limits sampling to the tokenizer's ids when the embedding table is padded."""
    if not prompt:
        raise ValueError("generate_ids needs at least one prompt token")
    model.eval()
    device = device or next(model.parameters()).device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed) if seed is not None else generator.seed()
    stop = set(stop_ids)
    context = model.cfg.context
    seq = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    for _ in range(max_new_tokens):
        with autocast(device, dtype):
            logits, _ = model(seq[:, -context:])
        token = sample_next(logits[:, -1, :vocab_size], temperature, top_k, generator)
        yield int(token)
        if int(token) in stop:
            return
        seq = torch.cat([seq, token.view(1, 1)], dim=1)


def stream_text(ids: Iterable[int], decode, hold: str = "\ufffd") -> Iterator[str]:
    """Turn a stream of token ids into text pieces. A piece ending in U+FFFD may be a UTF-8
    character split across tokens, so it is held back until the next token completes it."""
    tokens: list[int] = []
    emitted = 0
    text = ""
    for token in ids:
        tokens.append(token)
        text = decode(tokens)
        if not text.endswith(hold) and len(text) > emitted:
            yield text[emitted:]
            emitted = len(text)
    if len(text) > emitted:
        yield text[emitted:]

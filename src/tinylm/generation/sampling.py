"""Choosing the next token from logits.

Logit filters (each returns logits with the dropped tokens at -inf, rows independent):
`apply_repetition_penalty`, `top_k_filter`, `top_p_filter`, `min_p_filter`; `sample_next`
applies them in that order after the temperature (`apply_temperature`, overflow-free) and draws
one token per row. `seen_mask` and `suppress_mask` build the penalty's and the suppression's
masks; `token_logprobs` reports a drawn token's log-probability and its likeliest alternatives.

    logits (B, vocab) ─► penalty ─► / temperature ─► top-k ─► top-p ─► min-p ─► softmax ─► draw_tokens
                                                                         one uniform number per row from
                                                                         that row's generator (inverse CDF)

A draw takes exactly one uniform number per row from that row's `torch.Generator` (a request's seed
gives the same tokens whether it runs alone, in a batch, in `tinylm sample` or in the server), and
finds it in the row's cumulative distribution: exact, and about ten times cheaper on a 50k vocabulary
than `torch.multinomial` or an exponential race, which draw one random number per vocabulary entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from tinylm.errors import ConfigError
from tinylm.config.fields import FLOAT32_MAX

NEG_INF = float("-inf")
Generators = torch.Generator | Sequence[torch.Generator] | None


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL (Keskar et al. 2019): for the tokens marked in `seen` (B, vocab) bool, divide positive
    logits by `penalty` and multiply negative ones by it, so penalty > 1 makes them less likely.
    A penalty so small or so large that the result leaves the float32 range saturates at its
    ends (never inf, so the ranking stays defined); logits at -inf (suppressed) stay there."""
    if penalty == 1.0:
        return logits
    seen = seen[:, :logits.size(-1)]
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty).clamp(-FLOAT32_MAX, FLOAT32_MAX)
    return torch.where(seen & torch.isfinite(logits), penalised, logits)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (ties with the k-th are kept); 0 = keep all."""
    if not 0 < k < logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2019): keep the smallest set of the likeliest tokens
    whose probability mass reaches `p` (always at least the likeliest one); p >= 1 keeps all."""
    if p >= 1.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    vocab = probs.size(-1)
    # the nucleus lies among the likeliest k tokens once their mass reaches p: try a small k first
    # (a partial sort), grow it while some row's nucleus may be larger, sort everything at worst
    k = min(vocab, 64)
    while True:
        sorted_probs, order = torch.topk(probs, k, dim=-1) if k < vocab else torch.sort(probs, -1, descending=True)
        mass = torch.cumsum(sorted_probs, dim=-1)
        if k == vocab or bool((mass[:, -1] >= p).all()):
            break
        k = min(vocab, 16 * k)
    mass_before = mass - sorted_probs  # mass of the likelier tokens
    keep_sorted = mass_before < p  # the likelier tokens do not reach p yet
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, keep_sorted)
    return logits.masked_fill(~keep, NEG_INF)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Min-p (Nguyen et al. 2024): drop tokens whose probability is below min_p times the
    probability of the likeliest token of the row; 0 keeps all."""
    if min_p <= 0.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, NEG_INF)


def uniforms(rows: int, generator: Generators, device: torch.device) -> torch.Tensor:
    """(rows,) float64 uniform numbers in [0, 1): one from each row's generator when `generator` is
    a sequence of them (one per row), else `rows` numbers from the one generator (or the global one)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(rows, generator=generator, dtype=torch.float64, device=device)
    if len(generator) != rows:
        raise ValueError(f"{len(generator)} generators for {rows} rows; give one per row")
    return torch.cat([torch.rand(1, generator=g, dtype=torch.float64, device=device) for g in generator])


def draw_tokens(probs: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """One token per row of `probs` (B, vocab; rows need not sum to 1, zero entries are never drawn),
    by inverse transform sampling: u ~ U[0, 1) per row, the first token whose cumulative
    probability (in float64) exceeds u times the row's total."""
    cdf = probs.double().cumsum(dim=-1)
    total = cdf[:, -1:]
    target = uniforms(probs.size(0), generator, probs.device)[:, None] * total
    target = torch.minimum(target, torch.nextafter(total, torch.zeros_like(total)))  # stays below the total
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor | None:
    """`logits / temperature`, shifted so each row's largest value is 0 (the shift does not change
    the softmax): the division then cannot overflow to +inf, however small the temperature, and
    the likeliest token keeps probability > 0. A temperature above the float32 range acts as the
    largest float32 (uniform over the tokens not at -inf). Returns None when float32 cannot tell
    the temperature from 0 (below ~1.4e-45): that is greedy decoding."""
    t = torch.tensor(min(temperature, FLOAT32_MAX), dtype=torch.float32)
    if t <= 0:
        return None
    return (logits - logits.max(dim=-1, keepdim=True).values) / t.to(logits.device)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                generator: Generators = None, *, top_p: float = 1.0, min_p: float = 0.0,
                repetition_penalty: float = 1.0, seen: torch.Tensor | None = None,
                suppress: torch.Tensor | None = None) -> torch.Tensor:
    """Pick the next token for each row of `logits` (B, vocab). temperature <= 0 is greedy (after
    the repetition penalty; the other filters cannot change the likeliest token). `suppress`
    (vocab,) bool marks ids that are never picked. `generator`: one torch.Generator for all rows,
    or a sequence of one per row (each row draws one number from its own, so its tokens do not
    depend on the other rows)."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    if suppress is not None:
        logits = logits.masked_fill(suppress[:logits.size(-1)], NEG_INF)
    scaled = apply_temperature(logits, temperature) if temperature > 0 else None
    if scaled is None:
        return logits.argmax(dim=-1)
    scaled = min_p_filter(top_p_filter(top_k_filter(scaled, top_k), top_p), min_p)
    return draw_tokens(torch.softmax(scaled, dim=-1), generator)


def seen_mask(rows: Sequence[Sequence[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """(len(rows), vocab) bool: the ids each row holds (what the repetition penalty penalises)."""
    seen = torch.zeros(len(rows), vocab, dtype=torch.bool, device=device)
    for b, r in enumerate(rows):
        seen[b, [t for t in r if t < vocab]] = True
    return seen


def suppress_mask(suppress_tokens: Sequence[int] | None, suppress_ids: Iterable[int], vocab: int,
                  device: torch.device) -> torch.Tensor | None:
    """(vocab,) bool: the ids never generated, `suppress_tokens` (a row's own list) or else `suppress_ids`
    (the tokenizer's `suppressed_ids`); None when there are none. A ConfigError when no id stays allowed."""
    ids = [i for i in (suppress_tokens if suppress_tokens is not None else suppress_ids) if 0 <= i < vocab]
    if not ids:
        return None
    mask = torch.zeros(vocab, dtype=torch.bool, device=device)
    mask[ids] = True
    if bool(mask.all()):
        raise ConfigError(f"suppress_tokens leaves no token to generate (all {vocab} ids are suppressed)")
    return mask


@dataclass(slots=True)
class TokenLogprob:
    """A token with its log-probability under the model (before the temperature and the filters) and the
    `top` likeliest alternatives as (id, logprob), likeliest first."""

    token: int
    logprob: float | None  # None for a prompt's first token (nothing predicts it)
    top: list[tuple[int, float]] = field(default_factory=list)


def token_logprobs(logprobs: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """`token`'s entry of `logprobs` (vocab,) (a log_softmax) with the `top` likeliest alternatives."""
    out = TokenLogprob(token, float(logprobs[token]))
    if top:
        values, ids = torch.topk(logprobs, min(top, logprobs.size(-1)))
        out.top = list(zip(ids.tolist(), values.tolist(), strict=True))
    return out

"""Choosing the next token from logits, and turning generated ids into text.

Logit filters (each returns logits with the dropped tokens at -inf, rows independent):
`apply_repetition_penalty`, `top_k_filter`, `top_p_filter`, `min_p_filter`; `sample_next`
applies them in that order after the temperature (`apply_temperature`, overflow-free) and draws
one token per row. Text helpers: `stream_text` / `TextStream` (UTF-8-safe pieces) and
`cut_at_stop` / `StopFilter` (stop strings).

    logits (B, vocab) ─► penalty ─► / temperature ─► top-k ─► top-p ─► min-p ─► softmax ─► draw_tokens
                                                                         one uniform number per row from
                                                                         that row's generator (inverse CDF)

A draw takes exactly one uniform number per row from that row's `torch.Generator` (a request's seed
gives the same tokens whether it runs alone, in a batch, in `tinylm sample` or in the server), and
finds it in the row's cumulative distribution: exact, and about ten times cheaper on a 50k vocabulary
than `torch.multinomial` or an exponential race, which draw one random number per vocabulary entry.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import torch

from tinylm.inputs import FLOAT32_MAX

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


# --------------------------------------------------------------------------- text


class TextStream:
    """Token ids in, text pieces out, one id at a time (what `stream_text` does for an iterable):
    `push(id)` returns the text that id completes (maybe ""), `flush()` the held-back rest. A
    piece ending in `hold` (U+FFFD) may be a UTF-8 character split across tokens, so it is held
    back until the next token completes it. The ids are decoded after `prefix` (the prompt),
    which is not returned: the first piece is spaced or joined as it is in the whole text."""

    def __init__(self, decode: Callable[[Sequence[int]], str], prefix: Sequence[int] = (), hold: str = "\ufffd"):
        self.decode, self.hold = decode, hold
        self.tokens = list(prefix)
        self.text = decode(self.tokens) if self.tokens else ""
        self.emitted = len(self.text)

    def push(self, token: int) -> str:
        self.tokens.append(token)
        self.text = self.decode(self.tokens)
        if self.text.endswith(self.hold) or len(self.text) <= self.emitted:
            return ""
        out, self.emitted = self.text[self.emitted:], len(self.text)
        return out

    def flush(self) -> str:
        out, self.emitted = self.text[self.emitted:], max(len(self.text), self.emitted)
        return out


def stream_text(ids: Iterable[int], decode: Callable[[Sequence[int]], str], hold: str = "\ufffd",
                prefix: Sequence[int] = ()) -> Iterator[str]:
    """Turn a stream of token ids into text pieces (see `TextStream`: split UTF-8 characters are
    held back; the first piece is spaced or joined after `prefix` as in the whole text)."""
    stream = TextStream(decode, prefix, hold)
    for token in ids:
        piece = stream.push(token)
        if piece:
            yield piece
    rest = stream.flush()
    if rest:
        yield rest


def find_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest occurrence of any stop string in `text`, or -1."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else -1


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to (not including) the first stop string."""
    i = find_stop(text, stops)
    return text if i < 0 else text[:i]


class StopFilter:
    """Streams text pieces, cut before the first stop string: text that might be the beginning
    of a stop string is held back until the next piece shows whether it is one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = list(stops)
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def _held(self) -> int:
        """Length of the longest end of the text that is a proper beginning of a stop string."""
        longest = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.text) - self.emitted), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def feed(self, piece: str) -> str:
        """The text that is now safe to show (empty once a stop string was seen)."""
        if self.stopped:
            return ""
        start = max(self.emitted - max((len(s) for s in self.stops), default=0), 0)
        self.text += piece
        end = len(self.text) - self._held()  # a stop string may still begin at `end`
        i = find_stop(self.text[start:], self.stops)
        if i >= 0 and start + i <= end:  # no longer stop string can begin before this one
            self.stopped = True
            out, self.emitted = self.text[self.emitted:start + i], len(self.text)
            return out
        out, self.emitted = self.text[self.emitted:end], max(end, self.emitted)
        return out

    def flush(self) -> str:
        """The held-back rest at the end of the stream (up to a stop string it holds)."""
        if self.stopped:
            return ""
        out, self.emitted = cut_at_stop(self.text[self.emitted:], self.stops), len(self.text)
        return out

    def __call__(self, pieces: Iterable[str]) -> Iterator[str]:
        for piece in pieces:
            out = self.feed(piece)
            if out:
                yield out
            if self.stopped:
                return
        out = self.flush()
        if out:
            yield out

"""Continuous batching: many requests decode together on one model, each row as if it ran alone.

    submit(Request: rows of prompt ids + GenerationConfig) ──► waiting queue (at most `max_queue` rows)
                                                                  │ admitted between steps while fewer
                                                                  ▼ than `max_batch` rows run
    per-row KV cache (`model.new_cache(max_batch, per_row=True)`): new rows are prefilled into free
    slots (a row admitted alone as a batch of one: the computation `generate_ids` does), last logits kept
                                                                  │
    every step:  each running row samples its next token from its own logits with its own
                 torch.Generator and options (`sample_next` on that row alone: the generation engine's
                 filters, in its order) ──► TextStream + StopFilter ──► Event(text, logprobs, finish)
                 finished or cancelled rows leave at once (the last row moves into the freed slot)
                 one decode forward of every running row's new token; a row whose window is full is
                 refilled alone from its last context // 2 tokens (the generation engine's sliding rule)

Rows admitted in the same step are prefilled together (right-padded, one forward per 4,096 prompt
tokens), a row admitted alone or asking for its prompt's log-probabilities on its own. Such a scored
prompt may hold context + 1 tokens: the forward over its first `context` scores every token after the
first (lm-evaluation-harness's requests), and generation continues from its last `context`. Rows that
sample with the same options draw together (`sample_next` over their stacked logits, one generator
per row: each row still draws exactly what it would draw alone). With a compiled decode step
(`tinylm.inference`, `tinylm serve --compile on`) the cache is static and each decode runs the
compiled step on the running rows padded up to a power of two (one compilation per such size; on
CUDA GPUs always all `max_batch` rows, one CUDA graph).

Exactness: a row prefilled alone, its refills and a step with one running row are bit-identical to
`generate_ids` (same shapes, same masks, same generator draws), so a lone greedy or seeded request
gives exactly `Run.generate`'s text. With several rows the matrix products run with another batch
size and CPU/GPU kernels sum in another order, so logits differ by float32 rounding (up to about 2e-6
of the largest logit; tested within 1e-5); the per-row generator and filters are unchanged, so a
sampled token changes only if a draw falls within that distance of one of the vocabulary's boundaries
in the cumulative distribution (or greedy meets a near-tie). With one boundary per token the rate grows
with the vocabulary: about 1 token in 800,000 for a character model, 1 in 1,300 to 1 in 27,000 for
GPT-2's 50,257 tokens at temperature 1 (`bench/batch_exactness.py`, BENCHMARKS.md).

LoRA adapters: `activate(adapters)` (e.g. `tinylm.model.lora.set_active` bound to the model) is called
before every forward with one name (or None) for a lone row and the per-row list for a batch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from tinylm.generation.config import GenerationConfig
from tinylm.generation.engine import _seen_mask, _suppress_mask
from tinylm.generation.sampling import StopFilter, TextStream, sample_next
from tinylm.inference import autocast_for, compiled_step


PREFILL_TOKENS = 4096  # prompt tokens (rows x longest prompt) per forward when rows are prefilled together


class QueueFull(Exception):
    """The waiting queue cannot take the request's rows now (answer 503 with Retry-After)."""


class Closing(QueueFull):
    """The engine is shutting down (`close`) and takes no new rows."""


SHUTDOWN = "the server is shutting down; send the request again when it is back"


@dataclass
class Row:
    """One sequence to generate: prompt ids, decoding options (`max_new_tokens`, temperature, top_k,
    top_p, min_p, repetition_penalty, seed, stop), the LoRA adapter to use (None: the base model),
    and whether to report log-probabilities (`logprobs`: N alternatives per generated token, 0 = the
    chosen token's only; `prompt_logprobs`: the same for the prompt's tokens)."""

    prompt: list[int]
    config: GenerationConfig
    adapter: str | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None


@dataclass
class TokenLogprob:
    """A token with its log-probability under the model (before temperature and filters) and the
    `top` likeliest alternatives as (id, logprob), likeliest first."""

    token: int
    logprob: float | None  # None for a prompt's first token (nothing predicts it)
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Event:
    """What one step produced for one row of a request: new `text` (maybe empty while text is held
    back), the `tokens` it covers (with log-probabilities when asked), and at the end `finish`
    ("stop", "length"; or, with `error` saying why, "error" when generation failed and "shutdown"
    when the engine closed before the row ended) and the row's `completion_tokens`."""

    row: int
    text: str = ""
    tokens: list[TokenLogprob] = field(default_factory=list)
    finish: str | None = None
    error: str | None = None
    completion_tokens: int = 0
    prompt_logprobs: list[TokenLogprob] | None = None


class Request:
    """Rows submitted together; `on_event(Event)` is called from the engine's thread (it must not
    block). `cancel()` (e.g. the client went away) makes every row leave at the next step."""

    def __init__(self, rows: Sequence[Row], on_event: Callable[[Event], None]):
        self.rows, self.on_event = list(rows), on_event
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Seq:
    """A row in the engine: its sequence so far, generator, text pipeline and cache slot state."""

    def __init__(self, request: Request, index: int, engine: Engine):
        self.request, self.index = request, index
        self.row = row = request.rows[index]
        cfg = row.config
        self.generator = torch.Generator(device=engine.device)
        self.generator.manual_seed(cfg.seed) if cfg.seed is not None else self.generator.seed()
        self.ids = list(row.prompt)  # prompt + generated, for refills when the window slides
        self.new = 0
        self.text = TextStream(engine.decode, prefix=row.prompt)
        self.stops = StopFilter(cfg.stop) if cfg.stop else None
        self.seen: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None  # (1, vocab): the next token's, once computed
        self.length = 0  # filled positions of its cache slot
        self.done = False


class Engine:
    """The scheduler and decode loop. `start()` runs it in a daemon thread; tests may call `step()`.

    model: a `GPT` (eval mode); decode: ids -> text; vocab_size: the tokenizer's (padded embedding
    rows are never sampled); stop_ids: ids that end a row (end-of-text); markers: ids left out of
    the text; max_batch: rows decoding together; max_queue: rows waiting at most."""

    def __init__(self, model: torch.nn.Module, decode: Callable[[Sequence[int]], str], *, vocab_size: int,
                 stop_ids: Sequence[int] = (), markers: Sequence[int] = (), max_batch: int = 16,
                 max_queue: int = 256, device: torch.device | None = None, dtype: torch.dtype = torch.float32,
                 activate: Callable[[str | None | list[str | None]], None] | None = None,
                 suppress_ids: Sequence[int] = ()):
        self.model, self.decode = model, decode
        self.suppress_ids = tuple(suppress_ids)  # never generated (the tokenizer's), unless a row's suppress_tokens
        self._suppress: dict[tuple[int, ...] | None, torch.Tensor | None] = {}  # masks by a row's suppress_tokens
        self.vocab_size, self.stop_ids, self.markers = vocab_size, set(stop_ids), set(markers)
        self.max_batch, self.max_queue = max_batch, max_queue
        self.device = device or next(model.parameters()).device
        self.dtype, self.activate = dtype, activate
        self.context = model.cfg.context
        self.keep = max(1, self.context // 2)
        self.compiled = compiled_step(model)  # the model's compiled decode step, if it has one
        self.cache = model.new_cache(max_batch, per_row=True, static=self.compiled is not None)
        self.running: list[_Seq] = []  # running[i] owns cache row i
        self.waiting: deque[_Seq] = deque()
        self.cv = threading.Condition()
        self.steps = 0
        self.ended = 0  # rows ended unfinished by `close` or `stop`
        self._thread: threading.Thread | None = None
        self._stop = False
        self._deadline: float | None = None  # `close`: when the rows still running are ended

    # ------------------------------------------------------------------ the public side (any thread)

    def submit(self, request: Request) -> None:
        """Queue a request's rows; QueueFull when the waiting queue cannot take them all."""
        with self.cv:
            if self._deadline is not None:
                raise Closing(SHUTDOWN)
            if len(self.waiting) + len(request.rows) > self.max_queue:
                raise QueueFull(f"{len(self.waiting)} sequences are waiting (at most {self.max_queue})")
            self.waiting.extend(_Seq(request, i, self) for i in range(len(request.rows)))
            self.cv.notify()

    def wake(self) -> None:
        """Let the loop notice a cancellation now."""
        with self.cv:
            self.cv.notify()

    @property
    def load(self) -> tuple[int, int]:
        """(rows running, rows waiting)."""
        return len(self.running), len(self.waiting)

    def start(self) -> None:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="tinylm-engine", daemon=True)
            self._thread.start()

    def close(self, seconds: float) -> None:
        """Begin shutting down: no new rows from now on (`submit` raises `Closing`); rows running or
        waiting may go on for `seconds`, then each still there ends with finish "shutdown" (its text
        so far flushed) at the next step."""
        with self.cv:
            self._deadline = time.monotonic() + seconds
            self.cv.notify()

    @property
    def closing(self) -> bool:
        return self._deadline is not None

    def stop(self) -> None:
        """End the loop; rows still running or waiting end with finish "shutdown"."""
        with self.cv:
            self._stop = True
            self.cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self._end_all()

    def _end_all(self) -> None:
        """End every running and waiting row with finish "shutdown" (counted in `ended`)."""
        with self.cv:
            seqs = [seq for seq in [*self.running, *self.waiting] if not seq.done]
            self.running.clear()
            self.waiting.clear()
            self.cache.reset()
        for seq in seqs:
            self._finish(seq, "shutdown", Event(seq.index, error=SHUTDOWN))
        self.ended += len(seqs)

    def _loop(self) -> None:
        while True:
            with self.cv:
                while not (self._stop or self.running or self.waiting):
                    self.cv.wait()
                if self._stop:
                    return
            if self._deadline is not None and time.monotonic() >= self._deadline:
                self._end_all()
                continue
            try:
                self.step()
            except Exception as e:  # a failed forward ends the rows it held, never the loop
                message = f"generation failed: {type(e).__name__}: {e}"
                for seq in self.running:
                    self._emit(seq, Event(seq.index, finish="error", error=message, completion_tokens=seq.new))
                self.running.clear()
                self.cache.reset()

    # ------------------------------------------------------------------ one step (the engine's thread)

    @torch.inference_mode()
    def step(self) -> None:
        """Admit waiting rows (prefill), sample one token for every running row, drop finished rows,
        then decode all remaining rows together."""
        self.steps += 1
        admitted = self._admit()
        together = [seq for seq in admitted if seq.row.prompt_logprobs is None]
        if len(together) > 1:  # rows admitted together are prefilled as one batch (they come first)
            self._prefill_together(together)
        for seq in admitted:
            if len(together) < 2 or seq.row.prompt_logprobs is not None:
                self._prefill(seq)
        self._sample_all([seq for seq in self.running if not seq.done and seq.logits is not None])
        self._retire()
        if self.running:
            self._decode()

    def _admit(self) -> list[_Seq]:
        with self.cv:
            if any(s.request.cancelled for s in self.waiting):
                self.waiting = deque(s for s in self.waiting if not s.request.cancelled)
            for seq in self.running:
                if seq.request.cancelled and not seq.done:
                    seq.done = True
            self._retire()
            admitted = []
            while self.waiting and len(self.running) + len(admitted) < self.max_batch:
                admitted.append(self.waiting.popleft())
            # rows that can be prefilled together first, so that their slots are contiguous
            admitted.sort(key=lambda seq: seq.row.prompt_logprobs is not None)
            self.running += admitted
            return admitted

    def _forward(self, idx: torch.Tensor, cache, adapters: str | None | list[str | None],
                 last: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, vocab) in float32 of `idx` (B, T) appended to `cache` at each row's position
        `last` (B,) (default: the last one): the head runs on the positions sampled from only.
        `adapters` is set active first (one name or None, or one per row)."""
        return self._logits(idx, cache, adapters, last)[0]

    def _logits(self, idx: torch.Tensor, cache, adapters: str | None | list[str | None],
                last: torch.Tensor | None = None, every: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`_forward`'s logits, and with `every` also those of every position (B, T, vocab)."""
        if self.activate is not None:
            self.activate(adapters)
        with autocast_for(self.model, self.device, self.dtype):
            hidden = self.model.features(idx, cache=cache)
            at = hidden[:, -1] if last is None else hidden[torch.arange(idx.size(0), device=idx.device), last]
            return self.model.head(at).float(), self.model.head(hidden) if every else None

    def _fill(self, seq: _Seq, window: list[int], every: bool = False) -> torch.Tensor | None:
        """Prefill one row's slot alone with `window` (its prompt, or its last tokens when sliding);
        with `every`, return the logits of every position (the prompt's log-probabilities)."""
        slot = self.running.index(seq)
        idx = torch.tensor([window], dtype=torch.long, device=self.device)
        cache = self.cache.rows(slot, slot + 1, length=0)
        if every:
            seq.logits, logits = self._logits(idx, cache, seq.row.adapter, every=True)
        else:
            seq.logits, logits = self._forward(idx, cache, seq.row.adapter), None
        self.cache.lengths[slot] = seq.length = len(window)
        return logits

    def _prefill(self, seq: _Seq) -> None:
        window = seq.ids[-self.context:]
        if seq.row.prompt_logprobs is not None:
            # a scored prompt may have context + 1 tokens: one forward over the first `context` scores the rest
            scored = seq.ids[-(self.context + 1):]
            logits = self._fill(seq, scored[:self.context], every=True)
            lp = torch.log_softmax(logits[0, :len(scored) - 1, :self.vocab_size].float(), dim=-1)
            prompt = [TokenLogprob(scored[0], None)] + [
                self._logprob(lp[j:j + 1], scored[j + 1], seq.row.prompt_logprobs) for j in range(len(scored) - 1)]
            self._emit(seq, Event(seq.index, prompt_logprobs=prompt))
            if len(scored) > len(window) and seq.row.config.max_new_tokens > 0:
                self._fill(seq, window)  # generation continues from the last `context` tokens
        else:
            self._fill(seq, window)
        if seq.row.config.max_new_tokens == 0:
            self._finish(seq, "length", Event(seq.index))

    def _prefill_together(self, seqs: list[_Seq]) -> None:
        """Prefill rows in consecutive slots as one right-padded batch (per-row lengths: padding sits
        after each row's tokens, where the mask hides it), `PREFILL_TOKENS` tokens per forward at most;
        the head runs on each row's last position only."""
        first = self.running.index(seqs[0])
        windows = [seq.ids[-self.context:] for seq in seqs]
        start = 0
        while start < len(seqs):
            width = len(windows[start])
            stop = start + 1
            while stop < len(seqs) and (stop + 1 - start) * max(width, len(windows[stop])) <= PREFILL_TOKENS:
                width = max(width, len(windows[stop]))
                stop += 1
            rows = windows[start:stop]
            idx = torch.tensor([w + [0] * (width - len(w)) for w in rows], dtype=torch.long, device=self.device)
            cache = self.cache.rows(first + start, first + stop)
            cache.lengths.zero_()
            last = torch.tensor([len(w) - 1 for w in rows], device=self.device)
            logits = self._forward(idx, cache, [seq.row.adapter for seq in seqs[start:stop]], last)
            for b, (seq, window) in enumerate(zip(seqs[start:stop], rows, strict=True)):
                self.cache.lengths[first + start + b] = seq.length = len(window)
                seq.logits = logits[b:b + 1]
                if seq.row.config.max_new_tokens == 0:
                    self._finish(seq, "length", Event(seq.index))
            start = stop

    def _logprob(self, lp: torch.Tensor, token: int, n: int) -> TokenLogprob:
        """`token`'s entry of log-probabilities `lp` (1, vocab) with the n likeliest alternatives."""
        out = TokenLogprob(token, float(lp[0, token]))
        if n:
            values, ids = torch.topk(lp[0], min(n, lp.size(-1)))
            out.top = list(zip(ids.tolist(), values.tolist(), strict=True))
        return out

    def _sample_all(self, seqs: list[_Seq]) -> None:
        """Sample every row's next token: rows with the same options together (their logits stacked,
        one generator per row), then each row's text and events."""
        groups: dict[tuple, list[_Seq]] = {}
        for seq in seqs:
            cfg = seq.row.config
            key = (cfg.temperature > 0 and cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p, cfg.repetition_penalty,
                   None if cfg.suppress_tokens is None else tuple(cfg.suppress_tokens))
            groups.setdefault(key, []).append(seq)
        for group in groups.values():
            cfg = group[0].row.config
            logits = torch.cat([seq.logits for seq in group])[:, :self.vocab_size]
            seen = None
            if cfg.repetition_penalty != 1.0:
                for seq in group:
                    if seq.seen is None:
                        seq.seen = _seen_mask([seq.row.prompt], logits.size(-1), self.device)
                seen = torch.cat([seq.seen for seq in group])
            own = None if cfg.suppress_tokens is None else tuple(cfg.suppress_tokens)
            if own not in self._suppress:  # built once, not at every decode step
                self._suppress[own] = _suppress_mask(cfg, self.suppress_ids, logits.size(-1), self.device)
            suppress = self._suppress[own]
            tokens = sample_next(logits, cfg.temperature, cfg.top_k, [seq.generator for seq in group],
                                 top_p=cfg.top_p, min_p=cfg.min_p, repetition_penalty=cfg.repetition_penalty,
                                 seen=seen, suppress=suppress).tolist()
            for b, (seq, token) in enumerate(zip(group, tokens, strict=True)):
                seq.logits = None
                self._sampled(seq, token, logits[b:b + 1])

    def _sampled(self, seq: _Seq, token: int, logits: torch.Tensor) -> None:
        """A row drew `token` from `logits` (1, vocab): report it, its text, and whether the row ends."""
        cfg = seq.row.config
        if seq.seen is not None:
            seq.seen[0, token] = True
        event = Event(seq.index)
        if seq.row.logprobs is not None:
            event.tokens.append(self._logprob(torch.log_softmax(logits.float(), dim=-1), token, seq.row.logprobs))
        else:
            event.tokens.append(TokenLogprob(token, 0.0))
        seq.ids.append(token)
        seq.new += 1
        if token in self.stop_ids:
            return self._finish(seq, "stop", event)
        piece = seq.text.push(token) if token not in self.markers else ""
        if seq.stops is not None:
            piece = seq.stops.feed(piece)
            if seq.stops.stopped:
                event.text = piece
                return self._finish(seq, "stop", event, flush=False)
        event.text = piece
        if seq.new >= cfg.max_new_tokens:
            return self._finish(seq, "length", event)
        self._emit(seq, event)

    def _finish(self, seq: _Seq, reason: str, event: Event, flush: bool = True) -> None:
        if flush:
            rest = seq.text.flush()
            event.text += (seq.stops.feed(rest) + seq.stops.flush()) if seq.stops is not None else rest
        event.finish, event.completion_tokens = reason, seq.new
        seq.done = True
        self._emit(seq, event)

    def _emit(self, seq: _Seq, event: Event) -> None:
        try:
            seq.request.on_event(event)
        except Exception:  # the consumer is gone (closed event loop): treat as cancelled
            seq.request.cancelled = True

    def _move(self, src: int, dst: int) -> None:
        """Copy cache row `src` into row `dst` (its filled positions) and the sequence with it."""
        n = self.running[src].length
        for t in (*self.cache.k, *self.cache.v):
            t[dst, :, :n] = t[src, :, :n]
        self.cache.lengths[dst] = n
        self.running[dst] = self.running[src]

    def _retire(self) -> None:
        """Drop finished rows: each freed slot takes the last running row, so rows stay 0..n-1."""
        for slot in range(len(self.running) - 1, -1, -1):
            if self.running[slot].done:
                last = len(self.running) - 1
                if slot != last:
                    self._move(last, slot)
                self.running.pop()

    def _swap(self, a: int, b: int) -> None:
        for t in (*self.cache.k, *self.cache.v):
            t[[a, b]] = t[[b, a]]
        self.cache.lengths[[a, b]] = self.cache.lengths[[b, a]]
        self.running[a], self.running[b] = self.running[b], self.running[a]

    def _decode(self) -> None:
        # rows whose window is full go last and are refilled alone; the others decode together
        end = len(self.running)
        for slot in range(len(self.running) - 1, -1, -1):
            if self.running[slot].length >= self.context:
                end -= 1
                if slot != end:
                    self._swap(slot, end)
        batch = self.running[:end]
        for seq in self.running[end:]:
            self._fill(seq, seq.ids[-self.keep:])
        if not batch:
            return
        idx = torch.tensor([[seq.ids[-1]] for seq in batch], dtype=torch.long, device=self.device)
        adapters = [seq.row.adapter for seq in batch]
        if self.compiled is not None:
            last = self._decode_compiled(idx, adapters)
        else:
            last = self._forward(idx, self.cache.rows(0, end), adapters if len(batch) > 1 else adapters[0])
        for b, seq in enumerate(batch):
            seq.logits = last[b:b + 1]
            seq.length += 1

    def _decode_compiled(self, idx: torch.Tensor, adapters: list[str | None]) -> torch.Tensor:
        """The compiled step over the first `size` slots, size the power of two at or above the
        running rows (all `max_batch` on CUDA: one graph); the extra slots decode a dummy token and
        get their lengths back (free slots start from 0, so they never write past the cache)."""
        n = idx.size(0)
        size = self.max_batch if self.device.type == "cuda" else min(self.max_batch, 1 << (n - 1).bit_length())
        if size > n:
            self.cache.lengths[len(self.running):size] = 0
            idx = torch.cat([idx, idx.new_zeros(size - n, 1)])
        if self.activate is not None:
            self.activate(adapters + [None] * (size - n))
        with autocast_for(self.model, self.device, self.dtype):
            logits = self.compiled(idx, self.cache.rows(0, size) if size < self.max_batch else self.cache)
        if size > n:
            self.cache.lengths[n:size] -= 1
        return logits[:n]

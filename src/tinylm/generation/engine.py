"""The generation engine: every decode in tinylm is a loop over `Engine.step()` (`generate_ids`,
`stream_ids`, beam search, `Run.generate/stream/chat`, `tinylm sample` and `tinylm serve`).

    submit(Request(rows, on_event)) ──► waiting (at most `max_queue` rows; a beam row counts `beams`)
                                            │ admitted between steps while at most `max_batch` rows run
                                            ▼
    step():  admit ─► prefill ─► sample ─► retire ─► decode
      admit    waiting rows take free slots of the per-row KV cache (`model.new_cache(max_batch)`)
      prefill  rows admitted together: one forward per PREFILL_TOKENS prompt tokens, the head on each
               row's last position (rows of one length as an aligned batch; others right-padded); a row
               admitted alone, or scoring its prompt, on its own
      sample   each row's next token from its own logits: rows with the same options draw together
               (`sample_next` over their stacked logits, one torch.Generator per row seeded with the
               row's own seed); a beam row's `beams` hypotheses extend together (`BeamSearch`); then the
               token's log-probabilities ─► RowText (text pieces, stop strings) ─► Event(text, tokens, finish)
      retire   finished or cancelled rows leave at once; the last row moves into the freed slot
      decode   one forward of every running row's newest token (rows of one length: an aligned batch, no
               mask; the owner's compiled step, if it gave one, over a static cache); a row whose window
               is full is refilled instead from its last context // 2 tokens (the sliding window: the
               next token's logits come from that prefill). Without the cache (`use_cache=False`) every
               row's last `context` tokens run through the model at every step.

Exactness: a row prefilled alone, its refills and a step with one running row are the B = 1
computation (aligned cache, no mask), so a lone greedy or seeded row gives the same tokens whatever
the entry point. With several rows the matrix products run at another batch size, and CPU/GPU
kernels sum in another order, so logits differ by float32 rounding (up to about 2e-6 of the largest
logit; tested within 1e-5); the per-row generator and filters are unchanged, so a sampled token changes
only if a draw falls within that distance of a boundary of the cumulative distribution, or greedy
meets a near-tie (measured rates: `bench/batch_exactness.py`, BENCHMARKS.md).

LoRA adapters per row: `activate` (e.g. `tinylm.model.lora.set_active` bound to the model) is called
before every forward with one name (or None) for a lone row and the per-row list for a batch.
Offline callers step the engine themselves (`generation/generate.py`): `run(rows, on_event)` hands
each event to a callback (`generate`), `events(rows)` yields them (streaming); the server runs
`start()`'s thread (`close` for shutdown, `stop` to end it). Per step, the rows of one forward share
its logits tensor (row `at` each) and a KV-cache view of rows 0..n-1 is sliced once: the per-row
Python work of a step is the sampling bookkeeping and one Event (BENCHMARKS.md, "One engine").
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from tinylm.config import GenerationConfig
from tinylm.errors import ConfigError
from tinylm.generation.beam import Beam, BeamSearch
from tinylm.generation.compiled import DecodeStep
from tinylm.generation.sampling import TokenLogprob, sample_next, seen_mask, suppress_mask, token_logprobs
from tinylm.generation.text import Decode, RowText
from tinylm.errors import EmptyInputError
from tinylm.runtime import autocast_for

PREFILL_TOKENS = 4096  # prompt tokens (rows x longest prompt) per forward when rows are prefilled together
SHUTDOWN = "the server is shutting down; send the request again when it is back"


class QueueFull(Exception):
    """The waiting queue cannot take the request's rows now (a server answers 503 with Retry-After)."""


class Closing(QueueFull):
    """The engine is shutting down (`close`) and takes no new rows."""


@dataclass
class Row:
    """One sequence to generate: prompt ids (a window of its last `context` tokens is decoded; the
    repetition penalty sees them all), decoding options (its `seed` seeds this row's generator; with
    `beams` > 1 the row is a beam search, its hypotheses `beams` rows of the cache), the LoRA adapter to
    use (None: the model as it is), and log-probabilities to report (`logprobs`: N alternatives per
    generated token, 0 = the chosen token's only; `prompt_logprobs`: the same for the prompt's tokens,
    which may then number context + 1)."""

    prompt: list[int]
    config: GenerationConfig
    adapter: str | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    beam_search: bool = False  # a beam search even with beams = 1 (greedy, scored)


@dataclass(slots=True)
class Event:
    """What one step produced for one row of a request: new `text` (maybe empty while text is held
    back), the `tokens` it covers (with log-probabilities when asked), and at the end `finish`
    ("stop", "length"; or, with `error` saying why, "error" when generation failed and "shutdown"
    when the engine closed before the row ended), the row's `completion_tokens` and, for a beam row,
    its best `beams` (num_return_sequences of them, best first)."""

    row: int
    text: str = ""
    tokens: list[TokenLogprob] = field(default_factory=list)
    finish: str | None = None
    error: str | None = None
    completion_tokens: int = 0
    prompt_logprobs: list[TokenLogprob] | None = None
    beams: list[Beam] | None = None


class Request:
    """Rows submitted together; `on_event(Event)` is called from the thread that steps the engine (it
    must not block). `cancel()` (e.g. the client went away) makes every row leave at the next step.
    `open`: its rows not yet finished; `error`: what `on_event` raised, if it did (the request is then
    cancelled)."""

    def __init__(self, rows: Sequence[Row], on_event: Callable[[Event], None]):
        self.rows, self.on_event = list(rows), on_event
        self.cancelled = False
        self.open = len(self.rows)
        self.error: BaseException | None = None

    def cancel(self) -> None:
        self.cancelled = True


class _Seq:
    """One cache row: its sequence so far (prompt + generated, for windows and refills), generator, text,
    repetition mask, the logits of its next token once computed, and its slot's filled length."""

    def __init__(self, engine: Engine, request: Request, index: int, group: BeamSearch | None = None):
        self.request, self.index, self.group = request, index, group
        self.row = row = request.rows[index]
        self.cfg = row.config
        self.generator = None
        if group is None and self.cfg.temperature > 0:
            self.generator = torch.Generator(device=engine.device)
            self.generator.manual_seed(self.cfg.seed) if self.cfg.seed is not None else self.generator.seed()
        self.ids = list(row.prompt)
        self.new = 0
        self.text = (RowText(engine.decode, row.prompt, self.cfg.stop, engine.markers)
                     if engine.decode is not None and group is None else None)
        self.seen: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None  # (B, vocab) of the forward that computed this row's: row `at`
        self.at = 0
        self.key = (self.cfg.temperature > 0 and self.cfg.temperature, self.cfg.top_k, self.cfg.top_p,
                    self.cfg.min_p, self.cfg.repetition_penalty,
                    None if self.cfg.suppress_tokens is None else tuple(self.cfg.suppress_tokens))
        self.length = 0
        self.done = False

    @property
    def next_logits(self) -> torch.Tensor:
        """(1, vocab): the logits this row samples its next token from."""
        return self.logits[self.at:self.at + 1]


class Engine:
    """The scheduler and decode loop over one model (see the module docstring).

    model: a `GPT` (eval mode); decode: ids -> text (None: ids only, no stop strings); vocab_size: the
    tokenizer's (padded embedding rows are never sampled; None: the model's); stop_ids: ids that end a
    row (end-of-text); markers: ids left out of the text; suppress_ids: never generated unless a row's
    `suppress_tokens` says otherwise; max_batch: rows decoding together (a beam row takes `beams`);
    max_queue: rows waiting at most; use_cache: the KV cache (False: every step runs the model over
    each row's last `context` tokens); step: a compiled decode step (`compiled.DecodeStep`) to decode
    through; activate: called with the adapters before every forward. Use it as a context manager (or
    call `release`) to give a compiled step's cache back."""

    def __init__(self, model: torch.nn.Module, decode: Decode | None = None, *, vocab_size: int | None = None,
                 stop_ids: Sequence[int] = (), markers: Sequence[int] = (), suppress_ids: Sequence[int] = (),
                 max_batch: int = 16, max_queue: int = 256, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32, use_cache: bool = True, step: DecodeStep | None = None,
                 activate: Callable[[str | None | list[str | None]], None] | None = None):
        self.model, self.decode = model.eval(), decode
        self.vocab_size = min(vocab_size or model.cfg.vocab_size, model.cfg.vocab_size)
        self.stop_ids, self.markers = set(stop_ids), set(markers)
        self.suppress_ids = tuple(suppress_ids)
        self._suppress: dict[tuple[int, ...] | None, torch.Tensor | None] = {}  # masks by a row's suppress_tokens
        self.max_batch, self.max_queue = max_batch, max_queue
        self.device = device or next(model.parameters()).device
        self.dtype, self.activate = dtype, activate
        self.context = model.cfg.context
        self.keep = max(1, self.context // 2)  # the window a full row slides to
        self.use_cache = use_cache
        self.compiled = step if use_cache else None
        self.cache = None
        if use_cache:
            self.cache = step.acquire(max_batch) if step is not None else model.new_cache(max_batch)
        self.running: list[_Seq] = []  # running[i] owns cache row i
        self.waiting: deque[list[_Seq]] = deque()  # admitted whole: one row, or a beam row's hypotheses
        self.cv = threading.Condition()
        self.steps = 0
        self.ended = 0  # rows ended unfinished by `close` or `stop`
        self._thread: threading.Thread | None = None
        self._stop = False
        self._deadline: float | None = None  # `close`: when the rows still running are ended

    # ------------------------------------------------------------------ the public side (any thread)

    def submit(self, request: Request) -> None:
        """Queue a request's rows: a one-line TinylmError for a row the engine cannot generate (no ids,
        ids outside the vocabulary, a prompt longer than the context without truncate, stop strings
        without `decode`, more beams than max_batch); QueueFull when the waiting queue cannot take them
        all, Closing once `close` was called."""
        units = [self._unit(request, i) for i in range(len(request.rows))]
        with self.cv:
            if self._deadline is not None:
                raise Closing(SHUTDOWN)
            waiting, rows = sum(map(len, self.waiting)), sum(map(len, units))
            if waiting + rows > self.max_queue:
                raise QueueFull(f"{waiting} sequences are waiting (at most {self.max_queue})")
            self.waiting.extend(units)
            self.cv.notify()

    def _unit(self, request: Request, index: int) -> list[_Seq]:
        row, n = request.rows[index], len(request.rows)
        where = f"prompt {index + 1} of {n}" if n > 1 else "the prompt"
        cfg, vocab = row.config, self.model.cfg.vocab_size
        if not row.prompt:
            raise EmptyInputError(f"{where} has no token ids; an empty prompt is the tokenizer's start_ids() "
                                  "(tinylm.tokenizers.prompt.encode_text gives them for a text that encodes to nothing)")
        bad = next((t for t in row.prompt if not 0 <= t < vocab), None)
        if bad is not None:
            raise ConfigError(f"{where} holds token id {bad}, outside the model's vocabulary (0..{vocab - 1})")
        if len(row.prompt) > self.context + (row.prompt_logprobs is not None) and not cfg.truncate:
            raise ConfigError(f"a prompt has {len(row.prompt)} tokens, more than the model's context ({self.context}); "
                              "shorten it or allow truncation (truncate=True keeps its last tokens)")
        if cfg.stop and self.decode is None:
            raise ConfigError("stop strings need `decode` (the tokenizer's decode) to read the text")
        if cfg.beams == 1 and not row.beam_search:
            return [_Seq(self, request, index)]
        if cfg.beams > self.max_batch:
            raise ConfigError(f"a beam search of {cfg.beams} beams decodes {cfg.beams} rows together, more than this "
                              f"engine's {self.max_batch} (max_batch); use fewer beams or a larger max_batch")
        group = BeamSearch(cfg, row.prompt, vocab=self.vocab_size, stop_ids=self.stop_ids, device=self.device,
                           suppress=self._suppress_for(cfg, self.vocab_size), decode=self.decode, markers=self.markers)
        group.seqs = [_Seq(self, request, index, group) for _ in range(cfg.beams)]
        return group.seqs

    def wake(self) -> None:
        """Let the loop notice a cancellation now."""
        with self.cv:
            self.cv.notify()

    @property
    def load(self) -> tuple[int, int]:
        """(rows running, rows waiting)."""
        return len(self.running), sum(map(len, self.waiting))

    def events(self, rows: Sequence[Row]) -> Iterator[Event]:
        """Generate `rows` by stepping the engine in this thread (offline use), yielding each event as it
        comes; rows left unfinished when the caller stops iterating are cancelled."""
        pending: deque[Event] = deque()
        request = Request(rows, pending.append)
        self.submit(request)
        left = len(rows)
        try:
            while left:
                if not pending:
                    self.step()
                    continue
                event = pending.popleft()
                left -= event.finish is not None
                yield event
        finally:
            if left:
                self._drop(request)

    def run(self, rows: Sequence[Row], on_event: Callable[[Event], None]) -> None:
        """Generate `rows` by stepping the engine in this thread, handing each event to `on_event` as it
        comes: `events` without a generator and a queue between (what `generate` uses). An exception
        from `on_event` ends the request and is raised here."""
        request = Request(rows, on_event)
        self.submit(request)
        try:
            while request.open and request.error is None:
                self.step()
        finally:
            if request.open:
                self._drop(request)
        if request.error is not None:
            raise request.error

    def _drop(self, request: Request) -> None:
        """Take a cancelled request's rows out now (waiting and running), admitting nobody: rows are
        admitted only by `step`, which prefills them."""
        request.cancel()
        with self.cv:
            self.waiting = deque(unit for unit in self.waiting if unit[0].request is not request)
            for seq in self.running:
                seq.done = seq.done or seq.request is request
            self._retire()

    def release(self) -> None:
        """Give a compiled step's static cache back to it (for the next engine)."""
        if self.compiled is not None and self.cache is not None:
            self.compiled.release(self.cache)
            self.cache = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def start(self) -> None:
        """Step in a daemon thread whenever rows run or wait (the server)."""
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
            seqs = [*self.running, *(seq for unit in self.waiting for seq in unit)]
            self.running.clear()
            self.waiting.clear()
        ended = _rows(seqs)
        for seq in ended:
            self._finish(seq, "shutdown", Event(seq.index, error=SHUTDOWN))
        self.ended += len(ended)

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
                for seq in _rows(self.running):
                    self._finish(seq, "error", Event(seq.index, error=message), flush=False)
                self.running.clear()

    # ------------------------------------------------------------------ one step (the stepping thread)

    @torch.inference_mode()
    def step(self) -> None:
        """Admit waiting rows and prefill them, sample one token for every running row, drop finished
        rows, then decode the remaining rows together."""
        self.steps += 1
        self._prefill(self._admit())
        self._sample_all([seq for seq in self.running if not seq.done and seq.logits is not None])
        self._retire()
        if self.running:
            self._decode()

    def _admit(self) -> list[_Seq]:
        with self.cv:
            if any(unit[0].request.cancelled for unit in self.waiting):
                self.waiting = deque(unit for unit in self.waiting if not unit[0].request.cancelled)
            for seq in self.running:
                seq.done = seq.done or seq.request.cancelled
            self._retire()
            admitted: list[_Seq] = []
            while self.waiting and len(self.running) + len(admitted) + len(self.waiting[0]) <= self.max_batch:
                admitted += self.waiting.popleft()
            # rows that can be prefilled together first, so that their slots are contiguous
            admitted.sort(key=lambda seq: seq.row.prompt_logprobs is not None)
            self.running += admitted
            return admitted

    def _forward(self, idx: torch.Tensor, cache, adapters: str | None | list[str | None],
                 last: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, vocab) in float32 of `idx` (B, T) appended to `cache` (None: no cache), at each row's
        position `last` (B,) (default: the last one): the head runs on the positions sampled from only.
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

    def _window(self, seq: _Seq) -> list[int]:
        return seq.ids[-self.context:]

    def _fill(self, seqs: list[_Seq], windows: list[list[int]]) -> None:
        """Prefill `seqs` (their slots from their start) with `windows`, runs of consecutive slots together
        (at most PREFILL_TOKENS prompt tokens per forward): rows of one length as an aligned batch, others
        right-padded (per-row lengths: the padding sits after each row's tokens, where the mask hides it);
        the head runs on each row's last position only. Without the cache: the same forwards, uncached."""
        if not seqs:
            return
        slot = {id(seq): i for i, seq in enumerate(self.running)}
        order = sorted(range(len(seqs)), key=lambda i: slot[id(seqs[i])])
        start = 0
        while start < len(order):
            first = slot[id(seqs[order[start]])]
            width, stop = len(windows[order[start]]), start + 1
            while (stop < len(order) and slot[id(seqs[order[stop]])] == first + stop - start
                   and (stop + 1 - start) * max(width, len(windows[order[stop]])) <= PREFILL_TOKENS):
                width = max(width, len(windows[order[stop]]))
                stop += 1
            chunk = [seqs[i] for i in order[start:stop]]
            rows = [windows[i] for i in order[start:stop]]
            idx = torch.tensor([w + [0] * (width - len(w)) for w in rows], dtype=torch.long, device=self.device)
            aligned = all(len(w) == width for w in rows)
            cache = None
            if self.cache is not None:
                cache = self.cache.rows(first, first + len(chunk), length=0 if aligned else None)
                cache.lengths.zero_()
            last = None if aligned else torch.tensor([len(w) - 1 for w in rows], device=self.device)
            adapters = chunk[0].row.adapter if len(chunk) == 1 else [seq.row.adapter for seq in chunk]
            logits = self._forward(idx, cache, adapters, last)
            if cache is not None and not aligned:
                cache.lengths.copy_(torch.tensor([len(w) for w in rows], device=self.device))
            for b, (seq, window) in enumerate(zip(chunk, rows, strict=True)):
                seq.logits, seq.at, seq.length = logits, b, len(window)
            start = stop

    def _prefill(self, admitted: list[_Seq]) -> None:
        ready = []
        for seq in admitted:
            if seq.row.prompt_logprobs is not None:
                self._prefill_scored(seq)
            elif seq.cfg.max_new_tokens == 0:  # nothing to generate: no forward
                if seq.group is None or seq is seq.group.seqs[0]:
                    beams = seq.group.best() if seq.group is not None else None
                    self._finish(seq, "length", Event(seq.index, beams=beams))
                seq.done = True
            else:
                ready.append(seq)
        self._fill(ready, [self._window(seq) for seq in ready])

    def _prefill_scored(self, seq: _Seq) -> None:
        """A row that reports its prompt's log-probabilities, prefilled alone with the logits of every position.
        Its prompt may hold context + 1 tokens: one forward over the first `context` scores every token after
        the first (lm-evaluation-harness's requests), and generation continues from the last `context`."""
        scored = seq.ids[-(self.context + 1):]
        slot = self.running.index(seq)
        cache = self.cache.rows(slot, slot + 1, length=0) if self.cache is not None else None
        idx = torch.tensor([scored[:self.context]], dtype=torch.long, device=self.device)
        (seq.logits, logits), seq.at = self._logits(idx, cache, seq.row.adapter, every=True), 0
        seq.length = min(len(scored), self.context)
        lp = torch.log_softmax(logits[0, :len(scored) - 1, :self.vocab_size].float(), dim=-1)
        prompt = [TokenLogprob(scored[0], None)] + [
            token_logprobs(lp[j], scored[j + 1], seq.row.prompt_logprobs) for j in range(len(scored) - 1)]
        self._emit(seq, Event(seq.index, prompt_logprobs=prompt))
        if seq.cfg.max_new_tokens == 0:
            self._finish(seq, "length", Event(seq.index))
        elif len(scored) > self.context:
            self._fill([seq], [self._window(seq)])

    def _suppress_for(self, cfg: GenerationConfig, vocab: int) -> torch.Tensor | None:
        own = None if cfg.suppress_tokens is None else tuple(cfg.suppress_tokens)
        if own not in self._suppress:  # built once, not at every step
            self._suppress[own] = suppress_mask(cfg.suppress_tokens, self.suppress_ids, vocab, self.device)
        return self._suppress[own]

    def _sample_all(self, seqs: list[_Seq]) -> None:
        """Every row's next token: beam rows per search, the other rows grouped by their options (their
        logits stacked, one generator per row), then each row's text and events."""
        groups: dict[tuple, list[_Seq]] = {}
        beams: dict[int, BeamSearch] = {}
        for seq in seqs:
            if seq.group is not None:
                beams[id(seq.group)] = seq.group
                continue
            groups.setdefault(seq.key, []).append(seq)
        for search in beams.values():
            self._advance(search)
        for group in groups.values():
            cfg = group[0].cfg
            logits = self._stacked(group)
            seen = None
            if cfg.repetition_penalty != 1.0:
                for seq in group:
                    if seq.seen is None:
                        seq.seen = seen_mask([seq.row.prompt], logits.size(-1), self.device)
                seen = torch.cat([seq.seen for seq in group])
            generators = [seq.generator for seq in group] if cfg.temperature > 0 else None
            tokens = sample_next(logits, cfg.temperature, cfg.top_k, generators, top_p=cfg.top_p, min_p=cfg.min_p,
                                 repetition_penalty=cfg.repetition_penalty, seen=seen,
                                 suppress=self._suppress_for(cfg, logits.size(-1))).tolist()
            for b, (seq, token) in enumerate(zip(group, tokens, strict=True)):
                seq.logits = None
                self._sampled(seq, token, logits, b)

    def _stacked(self, seqs: list[_Seq]) -> torch.Tensor:
        """The next-token logits (len(seqs), vocab) of `seqs`: the forward's own tensor when they are all
        its rows in order (most decode steps), else their rows stacked."""
        base = seqs[0].logits
        if base.size(0) == len(seqs) and all(seq.logits is base and seq.at == b for b, seq in enumerate(seqs)):
            return base[:, :self.vocab_size]
        return torch.cat([seq.next_logits for seq in seqs])[:, :self.vocab_size]

    def _sampled(self, seq: _Seq, token: int, logits: torch.Tensor, b: int) -> None:
        """A row drew `token` from `logits[b]` (vocab,): report it, its text, and whether the row ends."""
        if seq.seen is not None:
            seq.seen[0, token] = True
        top = seq.row.logprobs
        event = Event(seq.index, "", [TokenLogprob(token, 0.0, []) if top is None else
                                      token_logprobs(torch.log_softmax(logits[b].float(), dim=-1), token, top)])
        seq.ids.append(token)
        seq.new += 1
        if token in self.stop_ids:
            return self._finish(seq, "stop", event)
        if seq.text is not None:
            event.text = seq.text.push(token)
            if seq.text.stopped:
                return self._finish(seq, "stop", event, flush=False)
        if seq.new >= seq.cfg.max_new_tokens:
            return self._finish(seq, "length", event)
        self._emit(seq, event)

    def _advance(self, search: BeamSearch) -> None:
        """One step of a beam search: its rows take the chosen hypotheses' states (cache rows, ids) and
        their new tokens, or, once it has ended, the request gets its best beams."""
        logits = self._stacked(search.seqs)
        chosen = search.advance(logits)
        for seq in search.seqs:
            seq.logits = None
            seq.new += 1
        if chosen is None:
            first = search.seqs[0]
            beams = search.best()
            self._finish(first, beams[0].finish if beams else "length",
                         Event(first.index, beams=beams, completion_tokens=max((len(b.ids) for b in beams), default=0)),
                         flush=False)
            for seq in search.seqs:
                seq.done = True
            return
        parents, tokens = chosen
        if parents != list(range(len(parents))):
            states = [(list(search.seqs[p].ids), search.seqs[p].length) for p in parents]
            if self.cache is not None:
                slot = {id(seq): i for i, seq in enumerate(self.running)}
                slots = [slot[id(seq)] for seq in search.seqs]
                self.cache.copy_rows(slots, [slots[p] for p in parents], states[0][1])
            for seq, (ids, length) in zip(search.seqs, states, strict=True):
                seq.ids, seq.length = ids, length
        for seq, token in zip(search.seqs, tokens, strict=True):
            seq.ids.append(token)

    def _finish(self, seq: _Seq, reason: str, event: Event, flush: bool = True) -> None:
        if flush and seq.text is not None:
            event.text += seq.text.flush()
        event.finish, event.completion_tokens = reason, event.completion_tokens or seq.new
        seq.done = True
        seq.request.open -= 1
        self._emit(seq, event)

    def _emit(self, seq: _Seq, event: Event) -> None:
        try:
            seq.request.on_event(event)
        except Exception as e:  # the consumer is gone (closed event loop): treat as cancelled
            seq.request.cancelled, seq.request.error = True, e

    def _move(self, src: int, dst: int) -> None:
        """Slot `dst` takes the row of slot `src` (its cache row's filled positions and the sequence)."""
        if self.cache is not None:
            self.cache.copy_rows([dst], [src], self.running[src].length)
        self.running[dst] = self.running[src]

    def _retire(self) -> None:
        """Drop finished rows: each freed slot takes the last running row, so rows stay 0..n-1."""
        for slot in range(len(self.running) - 1, -1, -1):
            if self.running[slot].done:
                last = len(self.running) - 1
                if slot != last:
                    self._move(last, slot)
                self.running.pop()

    def _decode(self) -> None:
        if not self.use_cache:  # every row's last `context` tokens through the model
            self._fill(self.running, [self._window(seq) for seq in self.running])
            return
        # rows whose window is full go last and are refilled from their last `keep` tokens; the others decode
        end = len(self.running)
        for slot in range(len(self.running) - 1, -1, -1):
            if self.running[slot].length >= self.context:
                end -= 1
                if slot != end:  # the row at `end` takes this slot; the full row needs no copy (it is refilled)
                    full = self.running[slot]
                    self._move(end, slot)
                    self.running[end] = full
        full = self.running[end:]
        self._fill(full, [seq.ids[-self.keep:] for seq in full])
        batch = self.running[:end]
        if not batch:
            return
        idx = torch.tensor([[seq.ids[-1]] for seq in batch], dtype=torch.long, device=self.device)
        adapters = [seq.row.adapter for seq in batch] if self.activate is not None else [None] * len(batch)
        if self.compiled is not None:
            logits = self._decode_compiled(idx, adapters)
        else:
            lengths = {seq.length for seq in batch}
            cache = self.cache.rows(0, end, length=lengths.pop() if len(lengths) == 1 else None)
            logits = self._forward(idx, cache, adapters if len(batch) > 1 else adapters[0])
        for b, seq in enumerate(batch):
            seq.logits, seq.at = logits, b
            seq.length += 1

    def _decode_compiled(self, idx: torch.Tensor, adapters: list[str | None]) -> torch.Tensor:
        """The compiled step over the first `size` slots, size the power of two at or above the
        decoding rows (all `max_batch` on CUDA: one graph); the extra slots decode a dummy token and
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


def _rows(seqs: Sequence[_Seq]) -> list[_Seq]:
    """The unfinished request rows among cache rows: a beam row's hypotheses once."""
    seen: set[tuple[int, int]] = set()
    out = []
    for seq in seqs:
        key = (id(seq.request), seq.index)
        if not seq.done and key not in seen:
            seen.add(key)
            out.append(seq)
    return out

"""The generation engine: batched sampling / greedy decoding and beam search, with a KV cache.

Batches of prompts of different lengths are left-padded; the model is told each row's padding
(`pad`), so padding is never attended to and each row's positions count from its first real
token: a row generates exactly what it would generate alone.

With the KV cache (default) the prompts run through the model once (prefill), then each step
feeds one token per row. The cache holds `context` positions. When a row's window would grow
past the context, the window *slides*: the cache is rebuilt from that row's last
`context // 2` tokens (one prefill; positions restart at 0 in the rebuilt window), while rows
that still fit keep their whole window. So `max_new_tokens` may exceed the context for every
position type, at the cost of one prefill every `context // 2` tokens. Without the cache
(`use_cache=False`) every step runs the model over the last `context` tokens of each row (the
window slides by one token per step); both agree exactly while a sequence fits in the context.

Beam search keeps `beams` hypotheses as the rows of one batch and reorders the cache's rows
(`reorder_cache`) to follow the surviving hypotheses after each step.

A model with a compiled decode step (`tinylm.inference.enable_compile`) decodes through it over a
static per-row cache instead: each row is prefilled alone, all rows then step together with fixed
shapes, and a row whose window is full slides on its own (the same windows as above).

Sampling draws from one generator per row (row b of a batch seeded `seed + b`), so a row's tokens
do not depend on the other rows and a seeded request gives the same text in `generate_ids`,
`tinylm sample` and the server. Decoding runs under `torch.inference_mode`; a model whose weights
are already in `dtype` (prepared by `tinylm.inference.prepare`) runs without autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch

from tinylm.errors import ConfigError
from tinylm.inputs import EmptyInputError, check_seeds
from tinylm.generation.config import GenerationConfig
from tinylm.generation.sampling import apply_repetition_penalty, find_stop, sample_next
from tinylm.inference import DecodeStep, autocast_for, compiled_step

Decode = Callable[[Sequence[int]], str]


# --------------------------------------------------------------------------- cache helpers


def reorder_cache(cache, index: torch.Tensor) -> None:
    """Make row i of `cache` a copy of row index[i] (beam search), in place, for every layer's
    keys and values (`cache.k[layer]`, `cache.v[layer]`: (batch, kv_heads, max_len, head_dim))."""
    n = cache.length
    for store in (cache.k, cache.v):
        for layer, t in enumerate(store):
            if t is None:
                continue
            if t.size(0) != index.numel():
                store[layer] = t.index_select(0, index)
            else:
                t[:, :, :n].copy_(t[:, :, :n].index_select(0, index))


def _left_pad(rows: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) ids with each row left-padded to the longest, and the padding per row (None: none)."""
    width = max(len(r) for r in rows)
    pad = [width - len(r) for r in rows]
    idx = torch.tensor([[0] * p + r for p, r in zip(pad, rows, strict=True)], dtype=torch.long, device=device)
    return idx, (torch.tensor(pad, dtype=torch.long, device=device) if any(pad) else None)


# --------------------------------------------------------------------------- decoders


class _Decoder:
    """The model's next-token logits for B growing sequences (rows). `seqs` holds every row's
    whole sequence (prompt + generated); the model sees each row's window `seqs[b][start[b]:]`."""

    def __init__(self, model: torch.nn.Module, prompts: list[list[int]], device: torch.device, dtype: torch.dtype):
        self.model, self.device, self.dtype = model, device, dtype
        self.context = model.cfg.context
        self.seqs = [list(p) for p in prompts]
        self.start = [max(0, len(p) - self.context) for p in prompts]

    def _forward(self, idx: torch.Tensor, **kwargs) -> torch.Tensor:
        with autocast_for(self.model, self.device, self.dtype):
            hidden = self.model.features(idx, **kwargs)
            return self.model.head(hidden[:, -1]).float()  # the head on the last position only

    def close(self) -> None:
        """Give back what the decoder borrowed (a compiled step's cache)."""

    def prefill(self) -> torch.Tensor:
        raise NotImplementedError

    def step(self, tokens: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def reorder(self, index: list[int]) -> None:
        self.seqs = [list(self.seqs[i]) for i in index]
        self.start = [self.start[i] for i in index]


class _WindowDecoder(_Decoder):
    """No cache: every step runs the model over the last `context` tokens of each row."""

    def prefill(self) -> torch.Tensor:
        windows = [s[-self.context:] for s in self.seqs]
        idx, pad = _left_pad(windows, self.device)
        return self._forward(idx) if pad is None else self._forward(idx, pad=pad)

    def step(self, tokens: list[int]) -> torch.Tensor:
        for s, t in zip(self.seqs, tokens, strict=True):
            s.append(t)
        return self.prefill()


class _CachedDecoder(_Decoder):
    """KV cache: one prefill, then one position per step; slides (rebuilds the cache from the
    last `context // 2` tokens of each row that outgrew the context) when the cache is full."""

    def __init__(self, model, prompts, device, dtype):
        super().__init__(model, prompts, device, dtype)
        self.keep = max(1, self.context // 2)
        self.cache = model.new_cache(len(prompts))
        self.pad: torch.Tensor | None = None
        self.rebuilds = 0

    def _fill(self) -> torch.Tensor:
        idx, self.pad = _left_pad([s[b:] for s, b in zip(self.seqs, self.start, strict=True)], self.device)
        self.cache.reset()
        return self._forward(idx, cache=self.cache, pad=self.pad)

    def prefill(self) -> torch.Tensor:
        return self._fill()

    def step(self, tokens: list[int]) -> torch.Tensor:
        for s, t in zip(self.seqs, tokens, strict=True):
            s.append(t)
        if self.cache.length + 1 > self.cache.max_len:  # full: slide the rows that outgrew the context
            for b, s in enumerate(self.seqs):
                if len(s) - self.start[b] > self.context:
                    self.start[b] = len(s) - self.keep
            self.rebuilds += 1
            return self._fill()
        idx = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        return self._forward(idx, cache=self.cache, pad=self.pad)

    def reorder(self, index: list[int]) -> None:
        super().reorder(index)
        if index != list(range(len(index))):
            at = torch.tensor(index, dtype=torch.long, device=self.device)
            reorder_cache(self.cache, at)
            if self.pad is not None:
                self.pad = self.pad.index_select(0, at)


class _StaticDecoder(_Decoder):
    """The model's compiled decode step over a static per-row cache: each row is prefilled alone
    (as a lone row would be), then every step decodes all rows together at fixed shapes. A row whose
    window is full slides on its own: its cache is refilled from the last `context // 2` tokens but
    the newest, which the step then appends (the windows of `_CachedDecoder`)."""

    def __init__(self, model, prompts, device, dtype, step: DecodeStep):
        super().__init__(model, prompts, device, dtype)
        self.keep = max(1, self.context // 2)
        self.compiled = step
        self.cache = step.acquire(len(prompts))
        self.lengths = [0] * len(prompts)  # each row's filled positions, known without asking the device
        self.rebuilds = 0

    def _fill(self, b: int, window: list[int]) -> torch.Tensor | None:
        self.lengths[b] = len(window)
        self.cache.lengths[b] = len(window)
        if not window:
            return None
        idx = torch.tensor([window], dtype=torch.long, device=self.device)
        return self._forward(idx, cache=self.cache.rows(b, b + 1, length=0))

    def prefill(self) -> torch.Tensor:
        return torch.cat([self._fill(b, s[self.start[b]:]) for b, s in enumerate(self.seqs)])

    def step(self, tokens: list[int]) -> torch.Tensor:
        for b, (s, t) in enumerate(zip(self.seqs, tokens, strict=True)):
            s.append(t)
            if self.lengths[b] >= self.context:  # full: slide this row alone
                self.start[b] = len(s) - self.keep
                self._fill(b, s[self.start[b]:-1])
                self.rebuilds += 1
            self.lengths[b] += 1
        idx = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        with autocast_for(self.model, self.device, self.dtype):
            return self.compiled(idx, self.cache)

    def reorder(self, index: list[int]) -> None:
        super().reorder(index)
        if index != list(range(len(index))):
            at = torch.tensor(index, dtype=torch.long, device=self.device)
            for t in (*self.cache.k, *self.cache.v, self.cache.lengths):
                t.copy_(t.index_select(0, at))
            self.lengths = [self.lengths[i] for i in index]

    def close(self) -> None:
        self.compiled.release(self.cache)


def _decoder(model, prompts, cfg: GenerationConfig, device, dtype) -> _Decoder:
    step = compiled_step(model) if cfg.use_cache else None
    if step is not None:
        return _StaticDecoder(model, prompts, device, dtype, step)
    return (_CachedDecoder if cfg.use_cache else _WindowDecoder)(model, prompts, device, dtype)


def _generators(seed: int | None, rows: int, device: torch.device) -> list[torch.Generator]:
    """One generator per row: row b seeded `seed + b` (each row draws what it would draw alone with
    that seed), or fresh random seeds."""
    out = []
    for b in range(rows):
        g = torch.Generator(device=device)
        g.manual_seed(seed + b) if seed is not None else g.seed()
        out.append(g)
    return out


# --------------------------------------------------------------------------- shared setup


def _setup(model: torch.nn.Module, prompts: Sequence[Sequence[int]], cfg: GenerationConfig,
           device: torch.device | None) -> tuple[list[list[int]], torch.device]:
    cfg.validate()
    if not prompts:
        raise EmptyInputError("generation needs at least one prompt (an empty prompt is the tokenizer's "
                              "start_ids())")
    check_seeds(cfg.seed, len(prompts), unit="prompt")  # row b draws from seed + b (`_generators`)
    rows = [list(map(int, p)) for p in prompts]
    vocab = model.cfg.vocab_size
    for i, r in enumerate(rows):
        where = f"prompt {i + 1} of {len(rows)}" if len(rows) > 1 else "the prompt"
        if not r:
            raise EmptyInputError(f"{where} has no token ids; an empty prompt is the tokenizer's start_ids() "
                                  "(tinylm.inputs.encode_text gives them for a text that encodes to nothing)")
        bad = next((t for t in r if not 0 <= t < vocab), None)
        if bad is not None:
            raise ConfigError(f"{where} holds token id {bad}, outside the model's vocabulary (0..{vocab - 1})")
    context = model.cfg.context
    longest = max(len(r) for r in rows)
    if longest > context and not cfg.truncate:
        raise ConfigError(f"a prompt has {longest} tokens, more than the model's context ({context}); "
                          "shorten it or allow truncation (truncate=True keeps its last tokens)")
    model.eval()
    return rows, device or next(model.parameters()).device


def _stop_checker(cfg: GenerationConfig, decode: Decode | None) -> Callable[[list[int]], bool] | None:
    """A test of whether generated ids contain a stop string (decoding only their tail)."""
    if not cfg.stop:
        return None
    if decode is None:
        raise ConfigError("stop strings need `decode` (the tokenizer's decode) to read the text")
    # a token is at least one byte and a character at most four, so a stop string of n
    # characters spans at most 4n tokens, plus one for the token that completes it
    window = 4 * max(len(s) for s in cfg.stop) + 1

    def stopped(ids: list[int]) -> bool:
        return find_stop(decode(ids[-window:]), cfg.stop) >= 0

    return stopped


def _suppress_mask(cfg: GenerationConfig, suppress_ids: Iterable[int], vocab: int,
                   device: torch.device) -> torch.Tensor | None:
    """(vocab,) bool: the ids never generated, `cfg.suppress_tokens` or else `suppress_ids` (the
    tokenizer's `suppressed_ids`); None when there are none. At least one id stays allowed."""
    ids = [i for i in (cfg.suppress_tokens if cfg.suppress_tokens is not None else suppress_ids) if 0 <= i < vocab]
    if not ids:
        return None
    mask = torch.zeros(vocab, dtype=torch.bool, device=device)
    mask[ids] = True
    if bool(mask.all()):
        raise ConfigError(f"suppress_tokens leaves no token to generate (all {vocab} ids are suppressed)")
    return mask


def _seen_mask(rows: list[list[int]], vocab: int, device: torch.device) -> torch.Tensor:
    seen = torch.zeros(len(rows), vocab, dtype=torch.bool, device=device)
    for b, r in enumerate(rows):
        seen[b, [t for t in r if t < vocab]] = True
    return seen


def _options(cfg: GenerationConfig | int | None, options: dict) -> GenerationConfig:
    if isinstance(cfg, int) and not isinstance(cfg, bool):  # generate_ids(model, prompt, 200, ...)
        options = {"max_new_tokens": cfg, **options}
        cfg = None
    if cfg is not None and not isinstance(cfg, GenerationConfig):
        raise ConfigError(f"the generation options must be a GenerationConfig or max_new_tokens (an integer), got "
                          f"{cfg!r}")
    return (cfg or GenerationConfig()).replace(**options)


# --------------------------------------------------------------------------- sampling / greedy


@torch.inference_mode()
def _sample_steps(model, rows: list[list[int]], cfg: GenerationConfig, *, vocab_size: int | None,
                  stop_ids: Iterable[int], device: torch.device, dtype: torch.dtype,
                  stopped: Callable[[list[int]], bool] | None = None,
                  suppress_ids: Iterable[int] = ()) -> Iterator[tuple[list[int], list[bool]]]:
    """Yield, per step, each row's new token and whether the row was still generating.
    A row finishes after a stop id or when `stopped(its new ids)`; finished rows are fed
    their last token (and ignored) until every row has finished."""
    if cfg.max_new_tokens == 0:
        return
    decoder = _decoder(model, rows, cfg, device, dtype)
    try:
        yield from _steps(decoder, rows, cfg, vocab_size, set(stop_ids), device, stopped, suppress_ids)
    finally:
        decoder.close()


def _steps(decoder: _Decoder, rows: list[list[int]], cfg: GenerationConfig, vocab_size: int | None,
           stop: set[int], device: torch.device, stopped: Callable[[list[int]], bool] | None,
           suppress_ids: Iterable[int]) -> Iterator[tuple[list[int], list[bool]]]:
    generator = _generators(cfg.seed, len(rows), device) if cfg.temperature > 0 else None
    new: list[list[int]] = [[] for _ in rows]
    active = [True] * len(rows)
    seen = None
    logits = decoder.prefill()
    suppress = _suppress_mask(cfg, suppress_ids, logits[:, :vocab_size].size(-1), device)
    for step in range(cfg.max_new_tokens):
        logits = logits[:, :vocab_size]
        if cfg.repetition_penalty != 1.0 and seen is None:
            seen = _seen_mask(rows, logits.size(-1), device)
        chosen = sample_next(logits, cfg.temperature, cfg.top_k, generator, top_p=cfg.top_p, min_p=cfg.min_p,
                             repetition_penalty=cfg.repetition_penalty, seen=seen, suppress=suppress)
        if seen is not None:
            seen[torch.arange(len(rows), device=device), chosen] = True
        tokens = chosen.tolist()
        was_active = list(active)
        for b, t in enumerate(tokens):
            if not active[b]:
                tokens[b] = decoder.seqs[b][-1]
                continue
            new[b].append(t)
            if t in stop or (stopped is not None and stopped(new[b])):
                active[b] = False
        yield tokens, was_active
        if not any(active) or step + 1 == cfg.max_new_tokens:
            return
        logits = decoder.step(tokens)


def stream_ids(model: torch.nn.Module, prompt: Sequence[int], cfg: GenerationConfig | int | None = None, *,
               vocab_size: int | None = None, stop_ids: Iterable[int] = (), device: torch.device | None = None,
               dtype: torch.dtype = torch.float32, suppress_ids: Iterable[int] = (), **options) -> Iterator[int]:
    """Yield up to `max_new_tokens` new ids after one prompt as they are generated (the last one
    is a stop id if one was drawn). Sampling / greedy only (beam search cannot stream)."""
    cfg = _options(cfg, options)
    if cfg.beams > 1:
        raise ConfigError("beam search cannot stream: it knows the best sequence only at the end")
    rows, device = _setup(model, [prompt], cfg, device)
    for tokens, active in _sample_steps(model, rows, cfg, vocab_size=vocab_size, stop_ids=stop_ids,
                                        device=device, dtype=dtype, suppress_ids=suppress_ids):
        if active[0]:
            yield tokens[0]


# --------------------------------------------------------------------------- beam search


@dataclass
class Beam:
    """One finished hypothesis: its new ids (ending with the stop id, if one ended it) and its
    score, sum of log-probabilities / len(ids) ** length_penalty."""

    ids: list[int]
    score: float
    logprob: float


@torch.inference_mode()
def beam_search(model: torch.nn.Module, prompt: Sequence[int], cfg: GenerationConfig | int | None = None, *,
                vocab_size: int | None = None, stop_ids: Iterable[int] = (), device: torch.device | None = None,
                dtype: torch.dtype = torch.float32, decode: Decode | None = None, suppress_ids: Iterable[int] = (),
                **options) -> list[Beam]:
    """Beam search for one prompt: the `num_return_sequences` best hypotheses, best first.

    Each step extends every live beam by every token, keeps the 2 * beams best extensions,
    moves those that end (a stop id or a stop string) to the finished list and keeps the best
    `beams` others live. It ends after `max_new_tokens` or once `beams` hypotheses are finished
    and no live beam scores above the worst of them (the usual heuristic). Live beams at the end
    count as finished."""
    cfg = _options(cfg, options)
    rows, device = _setup(model, [prompt], cfg, device)
    stop = set(stop_ids)
    stopped = _stop_checker(cfg, decode)
    width, lp = cfg.beams, cfg.length_penalty
    if cfg.max_new_tokens == 0:
        return [Beam([], 0.0, 0.0)]

    def normalised(logprob: float, length: int) -> float:
        # length ** lp in log space, kept inside the float64 range: any finite length_penalty ranks
        return logprob / math.exp(max(-700.0, min(700.0, lp * math.log(length))))

    decoder = _decoder(model, rows * width, cfg, device, dtype)
    try:
        return _beam_steps(decoder, rows, cfg, width, stop, stopped, device, vocab_size, normalised, suppress_ids)
    finally:
        decoder.close()


def _beam_steps(decoder: _Decoder, rows: list[list[int]], cfg: GenerationConfig, width: int, stop: set[int],
                stopped: Callable[[list[int]], bool] | None, device: torch.device, vocab_size: int | None,
                normalised: Callable[[float, int], float], suppress_ids: Iterable[int]) -> list[Beam]:
    logits = decoder.prefill()
    scores = torch.full((width,), float("-inf"), device=device)
    scores[0] = 0.0  # all rows start equal: only the first one may extend
    new: list[list[int]] = [[] for _ in range(width)]
    seen = _seen_mask(rows * width, logits[:, :vocab_size].size(-1), device) if cfg.repetition_penalty != 1 else None
    suppress = _suppress_mask(cfg, suppress_ids, logits[:, :vocab_size].size(-1), device)
    finished: list[Beam] = []
    for step in range(cfg.max_new_tokens):
        logits = logits[:, :vocab_size].float()
        if seen is not None:
            logits = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
        if suppress is not None:
            logits = logits.masked_fill(suppress, float("-inf"))
        logprobs = torch.log_softmax(logits, dim=-1)
        vocab = logprobs.size(-1)
        candidates = (scores[:, None] + logprobs).view(-1)
        top, where = torch.topk(candidates, min(2 * width, candidates.numel()))
        keep: list[tuple[int, int, float]] = []
        for s, i in zip(top.tolist(), where.tolist(), strict=True):
            if s == float("-inf"):
                break
            b, t = divmod(i, vocab)
            ids = new[b] + [t]
            if t in stop or (stopped is not None and stopped(ids)):
                finished.append(Beam(ids, normalised(s, len(ids)), s))
            else:
                keep.append((b, t, s))
                if len(keep) == width:
                    break
        if not keep:  # every extension ended
            new, scores = [], scores[:0]
            break
        while len(keep) < width:  # fewer live extensions than beams: fill with dead copies
            keep.append((keep[0][0], keep[0][1], float("-inf")))
        index = [b for b, _, _ in keep]
        tokens = [t for _, t, _ in keep]
        new = [new[b] + [t] for b, t, _ in keep]
        scores = torch.tensor([s for _, _, s in keep], device=device)
        if seen is not None:
            seen = seen[torch.tensor(index, device=device)]
            seen[torch.arange(width, device=device), torch.tensor(tokens, device=device)] = True
        if len(finished) >= width:
            worst = sorted(b.score for b in finished)[-width]
            if normalised(float(scores.max()), step + 1) <= worst:
                new, scores = [], scores[:0]
                break
        if step + 1 < cfg.max_new_tokens:
            decoder.reorder(index)
            logits = decoder.step(tokens)
    live = [Beam(ids, normalised(float(s), len(ids)), float(s)) for ids, s in zip(new, scores.tolist(), strict=True)
            if s != float("-inf")]
    ranked = sorted(finished + live, key=lambda beam: beam.score, reverse=True)
    return ranked[:cfg.num_return_sequences]


# --------------------------------------------------------------------------- the batch entry point


def generate_ids(model: torch.nn.Module, prompts: Sequence[Sequence[int]] | Sequence[int],
                 cfg: GenerationConfig | int | None = None, *, vocab_size: int | None = None,
                 stop_ids: Iterable[int] = (), device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32, decode: Decode | None = None,
                 suppress_ids: Iterable[int] = (), **options) -> list[list[int]] | list[int]:
    """New ids for each prompt of a batch (prompts of any lengths; sampling, greedy or beam search).

    `cfg` is a GenerationConfig (an int is taken as max_new_tokens); keyword `options` override
    its fields. A row stops after a stop id (kept as its last id) or once its text contains a
    stop string (`decode` needed). `vocab_size` limits the choice to the tokenizer's ids when
    the embedding is padded; `suppress_ids` are never generated (unless `cfg.suppress_tokens`
    names others; Run passes the tokenizer's `suppressed_ids`). Returns one list of new ids per
    prompt, or for beam search with num_return_sequences = n, n lists per prompt (grouped by
    prompt, best first); given a single prompt (a flat list of ids) it returns that prompt's first
    list. A prompt with no ids or ids outside the model's vocabulary is a one-line TinylmError."""
    single = bool(prompts) and not isinstance(prompts[0], (list, tuple, torch.Tensor))
    batch = [prompts] if single else prompts
    cfg = _options(cfg, options)
    rows, device = _setup(model, batch, cfg, device)
    kw = dict(vocab_size=vocab_size, stop_ids=stop_ids, device=device, dtype=dtype, suppress_ids=suppress_ids)
    if cfg.beams > 1:
        out = [beam.ids for r in rows for beam in beam_search(model, r, cfg, decode=decode, **kw)]
    else:
        out = [[] for _ in rows]
        for tokens, active in _sample_steps(model, rows, cfg, stopped=_stop_checker(cfg, decode), **kw):
            for b, t in enumerate(tokens):
                if active[b]:
                    out[b].append(t)
    return out[0] if single else out

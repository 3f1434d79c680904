"""Offline generation: the library's entry points, each a loop over the engine's step.

    generate_ids(model, prompts, cfg)   a batch of prompts -> new ids per prompt (sampling, greedy, beams)
    stream_ids(model, prompt, cfg)      one prompt -> its new ids as they are generated
    beam_search(model, prompt, cfg)     one prompt -> its best hypotheses with their scores
    generate(model, rows, ...)          engine rows -> what each generated (ids, text, finish, logprobs,
                                        beams): what `Run.generate/complete/chat` use
    stream(model, rows, ...)            the same as events, as they come (`Run.stream`)

A batch is one request of one row per prompt; row b samples with seed + b (`config.fields.check_seeds`), so a
row's tokens do not depend on the other rows and a seeded prompt gives the same text in `generate_ids`,
`tinylm sample` and the server. A beam row decodes its beams as rows of one batch; prompts of a beam
batch are searched one after another (an engine of `beams` rows). Decoding runs under
`torch.inference_mode`; a model prepared for inference (`precision.to_inference`) runs without autocast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import torch

from tinylm.config import GenerationConfig
from tinylm.errors import ConfigError
from tinylm.generation.beam import Beam
from tinylm.generation.compiled import DecodeStep
from tinylm.generation.engine import Engine, Event, Row
from tinylm.generation.sampling import TokenLogprob
from tinylm.generation.text import Decode
from tinylm.errors import EmptyInputError
from tinylm.config.fields import check_seeds


@dataclass
class Generated:
    """What one row generated: its new ids (the stop id last, if one ended it), their text (markers left
    out, cut before the first stop string; "" without `decode`), why it ended, the log-probabilities of
    its tokens (when asked) and, for a beam row, its best beams."""

    ids: list[int]
    text: str = ""
    finish: str | None = None
    logprobs: list[TokenLogprob] | None = None
    beams: list[Beam] | None = None


def options(cfg: GenerationConfig | int | None, changes: dict[str, Any]) -> GenerationConfig:
    """`cfg` (a GenerationConfig, or an int taken as max_new_tokens) with `changes`, validated."""
    if isinstance(cfg, int) and not isinstance(cfg, bool):  # generate_ids(model, prompt, 200, ...)
        changes = {"max_new_tokens": cfg, **changes}
        cfg = None
    if cfg is not None and not isinstance(cfg, GenerationConfig):
        raise ConfigError(f"the generation options must be a GenerationConfig or max_new_tokens (an integer), got "
                          f"{cfg!r}")
    return (cfg or GenerationConfig()).replace(**changes)


def batch_rows(prompts: Sequence[Sequence[int]], cfg: GenerationConfig, **row: Any) -> list[Row]:
    """One engine row per prompt, row b seeded seed + b (a one-line error for no prompts or seeds past int64)."""
    if not prompts:
        raise EmptyInputError("generation needs at least one prompt (an empty prompt is the tokenizer's "
                              "start_ids())")
    check_seeds(cfg.seed, len(prompts), unit="prompt")
    return [Row([int(t) for t in p], cfg if cfg.seed is None else dataclasses.replace(cfg, seed=cfg.seed + b), **row)
            for b, p in enumerate(prompts)]


def _engine(model: torch.nn.Module, rows: Sequence[Row], *, decode: Decode | None, vocab_size: int | None,
            stop_ids: Iterable[int], suppress_ids: Iterable[int], markers: Iterable[int] = (),
            device: torch.device | None, dtype: torch.dtype, step: DecodeStep | None) -> Engine:
    cfg = rows[0].config
    width = max(row.config.beams for row in rows) if any(r.config.beams > 1 for r in rows) else len(rows)
    return Engine(model, decode, vocab_size=vocab_size, stop_ids=tuple(stop_ids), markers=tuple(markers),
                  suppress_ids=tuple(suppress_ids), max_batch=width, max_queue=sum(r.config.beams for r in rows),
                  device=device, dtype=dtype, use_cache=cfg.use_cache, step=step)


def stream(model: torch.nn.Module, rows: Sequence[Row], **engine: Any) -> Iterator[Event]:
    """The events of `rows` generated together (an engine of their own; `engine`: `generate`'s keywords)."""
    with _engine(model, rows, **_defaults(engine)) as e:
        yield from e.events(rows)


def generate(model: torch.nn.Module, rows: Sequence[Row], **engine: Any) -> list[Generated]:
    """What each of `rows` generated. `engine` keywords: decode (ids -> text; needed for text and stop
    strings), vocab_size, stop_ids, suppress_ids, markers, device, dtype, step (a compiled decode step)."""
    out = [Generated([]) for _ in rows]
    scored = [row.logprobs is not None for row in rows]

    def take(event: Event) -> None:
        got = out[event.row]
        for t in event.tokens:
            got.ids.append(t.token)
        if event.text:
            got.text += event.text
        if scored[event.row]:
            if got.logprobs is None:
                got.logprobs = []
            got.logprobs.extend(event.tokens)
        if event.finish:
            got.finish, got.beams = event.finish, event.beams

    with _engine(model, rows, **_defaults(engine)) as e:
        e.run(rows, take)
    return out


def _defaults(engine: dict[str, Any]) -> dict[str, Any]:
    return {"decode": None, "vocab_size": None, "stop_ids": (), "suppress_ids": (), "device": None,
            "dtype": torch.float32, "step": None, **engine}


def generate_ids(model: torch.nn.Module, prompts: Sequence[Sequence[int]] | Sequence[int],
                 cfg: GenerationConfig | int | None = None, *, vocab_size: int | None = None,
                 stop_ids: Iterable[int] = (), device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32, decode: Decode | None = None,
                 suppress_ids: Iterable[int] = (), step: DecodeStep | None = None, **changes: Any
                 ) -> list[list[int]] | list[int]:
    """New ids for each prompt of a batch (prompts of any lengths; sampling, greedy or beam search).

    `cfg` is a GenerationConfig (an int is taken as max_new_tokens); keyword `changes` override its
    fields. A row stops after a stop id (kept as its last id) or once its text contains a stop string
    (`decode` needed). `vocab_size` limits the choice to the tokenizer's ids when the embedding is
    padded; `suppress_ids` are never generated (unless `cfg.suppress_tokens` names others; Run passes
    the tokenizer's `suppressed_ids`); `step`: a compiled decode step to decode through. Returns one
    list of new ids per prompt, or for beam search with num_return_sequences = n, n lists per prompt
    (grouped by prompt, best first); given a single prompt (a flat list of ids) it returns that
    prompt's first list. A prompt with no ids or ids outside the model's vocabulary is a one-line
    TinylmError."""
    single = bool(prompts) and not isinstance(prompts[0], (list, tuple, torch.Tensor))
    cfg = options(cfg, changes)
    rows = batch_rows([prompts] if single else prompts, cfg)
    done = generate(model, rows, vocab_size=vocab_size, stop_ids=stop_ids, device=device, dtype=dtype, decode=decode,
                    suppress_ids=suppress_ids, step=step)
    out = [beam.ids for g in done for beam in g.beams] if cfg.beams > 1 else [g.ids for g in done]
    return out[0] if single else out


def stream_ids(model: torch.nn.Module, prompt: Sequence[int], cfg: GenerationConfig | int | None = None, *,
               vocab_size: int | None = None, stop_ids: Iterable[int] = (), device: torch.device | None = None,
               dtype: torch.dtype = torch.float32, decode: Decode | None = None, suppress_ids: Iterable[int] = (),
               step: DecodeStep | None = None, **changes: Any) -> Iterator[int]:
    """Yield up to `max_new_tokens` new ids after one prompt as they are generated (the last one is a
    stop id if one was drawn). Sampling / greedy only (beam search cannot stream)."""
    cfg = options(cfg, changes)
    if cfg.beams > 1:
        raise ConfigError("beam search cannot stream: it knows the best sequence only at the end")
    rows = batch_rows([prompt], cfg)
    for event in stream(model, rows, vocab_size=vocab_size, stop_ids=stop_ids, device=device, dtype=dtype,
                        decode=decode, suppress_ids=suppress_ids, step=step):
        yield from (t.token for t in event.tokens)


def beam_search(model: torch.nn.Module, prompt: Sequence[int], cfg: GenerationConfig | int | None = None, *,
                vocab_size: int | None = None, stop_ids: Iterable[int] = (), device: torch.device | None = None,
                dtype: torch.dtype = torch.float32, decode: Decode | None = None, suppress_ids: Iterable[int] = (),
                step: DecodeStep | None = None, **changes: Any) -> list[Beam]:
    """Beam search for one prompt (beams = 1 included: then it is greedy, with the scores): the
    `num_return_sequences` best hypotheses, best first (see `generation/beam.py`)."""
    cfg = options(cfg, changes)
    (row,) = batch_rows([prompt], cfg, beam_search=True)
    (done,) = generate(model, [row], vocab_size=vocab_size, stop_ids=stop_ids, device=device, dtype=dtype,
                       decode=decode, suppress_ids=suppress_ids, step=step)
    return done.beams

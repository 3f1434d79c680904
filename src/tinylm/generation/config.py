"""Decoding options: one typed dataclass shared by the library, `Run.generate` and `tinylm sample`.

Kept free of torch: `tinylm.config.SampleConfig` extends it, and `tinylm.config` must import fast.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from tinylm.errors import ConfigError
from tinylm.inputs import INT64_MAX, check_fields, check_range

MAX_BEAMS = 1024  # beams are rows of one batch, each with its own KV cache


@dataclass
class GenerationConfig:
    """How to continue a prompt. The order of the logit filters is: repetition penalty,
    temperature, top-k, top-p, min-p; then one token is drawn (or the likeliest with
    temperature <= 0). Ids in `suppress_tokens` (default: the tokenizer's `suppressed_ids`, ids
    that are never training targets such as char's `<unk>`) are never generated. Beam search
    (beams > 1) is deterministic: it scores sequences by their log-probability under the model
    (after the repetition penalty) and ignores temperature, top-k, top-p and min-p."""

    max_new_tokens: int = 500
    temperature: float = 0.8  # <= 0 means greedy
    top_k: int = 0  # sample among the k likeliest tokens (0 = off)
    top_p: float = 1.0  # nucleus: the smallest set of tokens whose probability reaches p (1 = off)
    min_p: float = 0.0  # drop tokens less likely than min_p * the likeliest token's probability (0 = off)
    repetition_penalty: float = 1.0  # CTRL: divide positive / multiply negative logits of seen tokens (1 = off)
    seed: int | None = None  # seeds the sampler (None: a fresh random seed)
    beams: int = 1  # beam search width (1 = sampling / greedy)
    length_penalty: float = 1.0  # beam score = sum of log-probabilities / length ** length_penalty
    num_return_sequences: int = 1  # the n best beams (n <= beams)
    stop: list[str] = field(default_factory=list)  # stop before the first of these strings (text is cut there)
    use_cache: bool = True  # KV cache (False: run the model over the last `context` tokens for every token)
    truncate: bool = True  # a prompt longer than the context keeps its last `context` tokens (False: error)
    suppress_tokens: list[int] | None = None  # ids never generated (None: the tokenizer's suppressed_ids, e.g. <unk>)

    def validate(self) -> GenerationConfig:
        """Check every option (one-line ConfigError). NaN and infinities are refused everywhere;
        the edges are defined: temperature so small that float32 cannot tell it from 0 is greedy,
        a huge one is uniform sampling; see docs/input-rules.md."""
        if isinstance(self.stop, str):  # one stop string given where a list belongs
            self.stop = [self.stop]
        check_fields(self)
        check_range("max_new_tokens", self.max_new_tokens, ge=0)
        check_range("temperature", self.temperature, note=" (<= 0 is greedy)")
        check_range("top_k", self.top_k, ge=0, note=" (0 = off)")
        check_range("top_p", self.top_p, gt=0, le=1)
        check_range("min_p", self.min_p, ge=0, lt=1)
        check_range("repetition_penalty", self.repetition_penalty, gt=0, note=" (1 = off)")
        check_range("beams", self.beams, ge=1, le=MAX_BEAMS)
        check_range("length_penalty", self.length_penalty)
        check_range("num_return_sequences", self.num_return_sequences, ge=1)
        if self.num_return_sequences > self.beams:
            hint = ("raise beams to at least as many" if self.beams > 1 else
                    f"they are the best hypotheses of a beam search (beams={self.num_return_sequences}); "
                    "for several samples use --num-samples N (Python: a batch [prompt] * N)")
            raise ConfigError(f"num_return_sequences ({self.num_return_sequences}) must not exceed beams "
                              f"({self.beams}): {hint}")
        _check(isinstance(self.stop, (list, tuple)) and all(isinstance(s, str) and s for s in self.stop),
               "stop strings must be non-empty text")
        _check(self.suppress_tokens is None or (isinstance(self.suppress_tokens, (list, tuple)) and all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= INT64_MAX for i in self.suppress_tokens)),
            "suppress_tokens must be a list of token ids (None: the tokenizer's suppressed_ids)")
        return self

    def replace(self, **options: Any) -> GenerationConfig:
        """A validated copy with `options` changed; an unknown option is a one-line ConfigError.
        The copy is a plain GenerationConfig, whatever subclass `self` is."""
        names = [f.name for f in dataclasses.fields(GenerationConfig)]
        for key in options:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known options: {', '.join(names)}"
                raise ConfigError(f"unknown generation option {key!r}; {hint}")
        values = {name: getattr(self, name) for name in names}
        values["stop"] = list(values["stop"]) if isinstance(values["stop"], (list, tuple)) else values["stop"]
        if isinstance(values["suppress_tokens"], (list, tuple)):
            values["suppress_tokens"] = list(values["suppress_tokens"])
        return GenerationConfig(**{**values, **options}).validate()


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)

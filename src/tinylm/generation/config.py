"""Decoding options: one typed dataclass shared by the library, `Run.generate` and `tinylm sample`.

Kept free of torch: `tinylm.config.SampleConfig` extends it, and `tinylm.config` must import fast.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from tinylm.errors import ConfigError


@dataclass
class GenerationConfig:
    """How to continue a prompt. The order of the logit filters is: repetition penalty,
    temperature, top-k, top-p, min-p; then one token is drawn (or the likeliest with
    temperature <= 0). Beam search (beams > 1) is deterministic: it scores sequences by their
    log-probability under the model (after the repetition penalty) and ignores temperature,
    top-k, top-p and min-p."""

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

    def validate(self) -> GenerationConfig:
        if isinstance(self.stop, str):  # one stop string given where a list belongs
            self.stop = [self.stop]
        _check(self.max_new_tokens >= 0, f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        _check(self.top_k >= 0, f"top_k must be >= 0 (0 = off), got {self.top_k}")
        _check(0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}")
        _check(0.0 <= self.min_p < 1.0, f"min_p must be in [0, 1), got {self.min_p}")
        _check(self.repetition_penalty > 0, f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        _check(self.beams >= 1, f"beams must be >= 1, got {self.beams}")
        _check(self.num_return_sequences >= 1, f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        _check(self.num_return_sequences <= self.beams,
               f"num_return_sequences ({self.num_return_sequences}) must not exceed beams ({self.beams}); "
               "more sequences than beams need more beams")
        _check(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty text")
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
        values["stop"] = list(values["stop"]) if not isinstance(values["stop"], str) else values["stop"]
        return GenerationConfig(**{**values, **options}).validate()


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)

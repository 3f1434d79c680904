"""Text generation used by `tinylm sample` and `tinylm.load(run_dir).generate(...)`.

    GenerationConfig                      the decoding options (torch-free; SampleConfig extends it)
    generate_ids(model, prompts, cfg)     a batch of prompts -> new ids per prompt (KV cache, sliding window)
    stream_ids(model, prompt, cfg)        one prompt -> an iterator of new ids
    beam_search(model, prompt, cfg)       the best hypotheses with their scores
    sample_next, top_k_filter, top_p_filter, min_p_filter, apply_repetition_penalty
    stream_text, TextStream, StopFilter   ids -> UTF-8-safe text pieces; stop strings (cut_at_stop)
"""

from __future__ import annotations

from typing import Any

from tinylm.generation.config import GenerationConfig

_ENGINE = ("Beam", "beam_search", "generate_ids", "reorder_cache", "stream_ids")
_SAMPLING = ("StopFilter", "TextStream", "apply_repetition_penalty", "cut_at_stop", "min_p_filter", "sample_next",
             "stream_text", "top_k_filter", "top_p_filter")

__all__ = ["GenerationConfig", *_ENGINE, *_SAMPLING]


def __getattr__(name: str) -> Any:
    # the engine pulls in torch: import it on first use, so `tinylm.config` stays light
    if name in _ENGINE:
        from tinylm.generation import engine

        return getattr(engine, name)
    if name in _SAMPLING:
        from tinylm.generation import sampling

        return getattr(sampling, name)
    raise AttributeError(f"module 'tinylm.generation' has no attribute {name!r}")

"""Text generation: one engine for every caller (`tinylm sample`, `tinylm.load(run_dir).generate(...)`,
`tinylm serve`).

    GenerationConfig                      the decoding options (torch-free, in tinylm.config)
    Engine, Request, Row, Event           the engine: rows decoding together, one step at a time (engine.py)
    generate_ids(model, prompts, cfg)     a batch of prompts -> new ids per prompt (generate.py)
    stream_ids(model, prompt, cfg)        one prompt -> an iterator of new ids
    beam_search(model, prompt, cfg)       the best hypotheses with their scores (beam.py)
    sample_next, top_k_filter, top_p_filter, min_p_filter, apply_repetition_penalty   (sampling.py)
    stream_text, TextStream, StopFilter, RowText, cut_at_stop   ids -> UTF-8-safe text; stop strings (text.py)
    precision.py, kernels.py, compiled.py   inference precision, CPU decode kernels, the compiled decode step
"""

from __future__ import annotations

from typing import Any

from tinylm.config import GenerationConfig

_LAZY = {"engine": ("Engine", "Event", "QueueFull", "Closing", "Request", "Row"),
         "generate": ("Generated", "beam_search", "generate", "generate_ids", "stream", "stream_ids"),
         "beam": ("Beam", "BeamSearch"),
         "sampling": ("TokenLogprob", "apply_repetition_penalty", "min_p_filter", "sample_next", "top_k_filter",
                      "top_p_filter"),
         "text": ("RowText", "StopFilter", "TextStream", "added_text", "cut_at_stop", "stream_text")}

__all__ = ["GenerationConfig", *(name for names in _LAZY.values() for name in names)]


def __getattr__(name: str) -> Any:
    # the engine pulls in torch: import it on first use, so `tinylm.config` stays light
    for module, names in _LAZY.items():
        if name in names:
            import importlib

            return getattr(importlib.import_module(f"tinylm.generation.{module}"), name)
    raise AttributeError(f"module 'tinylm.generation' has no attribute {name!r}")

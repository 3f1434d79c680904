"""Evaluation: loss, perplexity and bits per byte (`evaluate`), used by `tinylm eval` and the trainer;
benchmarks by name in `tasks` (`tinylm eval --tasks`)."""

from tinylm.evaluation.perplexity import LMEval, score_tokens, summarize
from tinylm.evaluation.run_eval import evaluate

__all__ = ["LMEval", "evaluate", "score_tokens", "summarize"]

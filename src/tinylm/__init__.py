"""tinylm: build, train, evaluate and sample from small GPT-style language models."""

from __future__ import annotations

from typing import Any

from tinylm.errors import CheckpointError, ConfigError, DataError, TinylmError, TokenizerError
from tinylm.version import __version__

__all__ = ["CheckpointError", "ConfigError", "DataError", "Run", "TinylmError", "TokenizerError",
           "__version__", "load"]


def __getattr__(name: str) -> Any:
    # `Run` and `load` pull in torch: import them on first use, so that tokenizer-only work
    # (such as the worker processes of `tinylm prepare`) starts fast.
    if name in ("Run", "load"):
        from tinylm.run import run

        return getattr(run, name)
    raise AttributeError(f"module 'tinylm' has no attribute {name!r}")

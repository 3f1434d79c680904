"""tinylm: build, train, evaluate and sample from small GPT-style language models."""

__version__ = "0.1.0"

from tinylm.errors import CheckpointError, ConfigError, DataError, TinylmError, TokenizerError  # noqa: E402
from tinylm.rundir import Run, load  # noqa: E402

__all__ = ["CheckpointError", "ConfigError", "DataError", "Run", "TinylmError", "TokenizerError",
           "__version__", "load"]

"""The decoder-only transformer."""

from tinylm.config import ModelConfig
from tinylm.model.gpt import GPT

__all__ = ["GPT", "ModelConfig"]

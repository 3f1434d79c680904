"""The decoder-only transformer."""

from tinylm.config import ModelConfig
from tinylm.model.gpt import GPT, KVCache

__all__ = ["GPT", "KVCache", "ModelConfig"]

"""The decoder-only transformer (gpt.py), its key/value cache (cache.py) and LoRA adapters (lora.py)."""

from tinylm.config import ModelConfig
from tinylm.model.cache import KVCache
from tinylm.model.gpt import GPT

__all__ = ["GPT", "KVCache", "ModelConfig"]

"""Tokenizers by name: `char` (more kinds slot into `KINDS`).

A tokenizer spec is `KIND` or `KIND:SIZE` (for trained subword vocabularies, e.g. `bpe:4096`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from tinylm.errors import TokenizerError
from tinylm.tokenizers.base import TOKENIZER_FILE, Tokenizer
from tinylm.tokenizers.char import CharTokenizer

KINDS: dict[str, type[Tokenizer]] = {"char": CharTokenizer}

__all__ = ["KINDS", "TOKENIZER_FILE", "CharTokenizer", "Tokenizer", "load_tokenizer",
           "parse_spec", "train_tokenizer"]


def parse_spec(spec: str) -> tuple[type[Tokenizer], dict[str, int]]:
    kind, _, size = spec.partition(":")
    if kind not in KINDS:
        raise TokenizerError(f"unknown tokenizer {kind!r}; choose one of {', '.join(KINDS)}")
    if not size:
        return KINDS[kind], {}
    if not size.isdigit():
        raise TokenizerError(f"tokenizer spec {spec!r}: the part after ':' must be a vocabulary size")
    return KINDS[kind], {"vocab_size": int(size)}


def train_tokenizer(spec: str, texts: Iterable[str]) -> Tokenizer:
    cls, options = parse_spec(spec)
    return cls.train(texts, **options)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise TokenizerError(f"{directory} has no {TOKENIZER_FILE}; it is not a tinylm run or data directory")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        kind = state.pop("kind")
        state.pop("format", None)
        return KINDS[kind].from_dict(state)
    except KeyError as e:
        raise TokenizerError(f"{path} names an unknown tokenizer or lacks field {e}") from None
    except (ValueError, TypeError) as e:
        raise TokenizerError(f"{path} is corrupt ({e}); re-run `tinylm prepare`") from None

"""Tokenizers by name, all behind the `Tokenizer` interface (base.py):

    char   one id per character of the corpus, unknown characters -> id 0
    word   regex words, numbers and punctuation; <pad> <unk> <sos> <eos>; capped vocabulary
    gpt2   GPT-2's 50,257-token byte-level BPE via tiktoken, from bundled files (offline)
    bpe    byte-level BPE trained on your corpus with Hugging Face `tokenizers`
    hf     any Hugging Face tokenizer.json (Llama, SmolLM, BERT, ...), with its special tokens

A tokenizer spec is the kind followed by `:`-separated options: a vocabulary size for trained
vocabularies (`bpe:4096`, `word:30000`) and flags (`word:lower`, `word:8000:lower`); `hf:PATH`
names a directory holding tokenizer.json, or the file itself (the rest of the spec is the path).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from tinylm.errors import TokenizerError
from tinylm.tokenizers.base import TOKENIZER_FILE, Tokenizer
from tinylm.tokenizers.bpe import BPETokenizer
from tinylm.tokenizers.char import CharTokenizer
from tinylm.tokenizers.gpt2 import GPT2Tokenizer
from tinylm.tokenizers.hf import HFTokenizer, source_digest
from tinylm.tokenizers.word import WordTokenizer

KINDS: dict[str, type[Tokenizer]] = {"char": CharTokenizer, "word": WordTokenizer, "gpt2": GPT2Tokenizer,
                                     "bpe": BPETokenizer, "hf": HFTokenizer}

__all__ = ["KINDS", "TOKENIZER_FILE", "BPETokenizer", "CharTokenizer", "GPT2Tokenizer", "HFTokenizer", "Tokenizer",
           "WordTokenizer", "load_tokenizer", "parse_spec", "spec_identity", "spec_vocab_size", "train_tokenizer"]


def parse_spec(spec: str) -> tuple[type[Tokenizer], dict[str, int | bool | str]]:
    kind, *parts = spec.split(":")
    if kind not in KINDS:
        raise TokenizerError(f"unknown tokenizer {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "hf":  # hf:PATH (a path may itself hold ":")
        path = spec.partition(":")[2]
        if not path:
            raise TokenizerError("tokenizer spec 'hf' needs a path: hf:DIR or hf:DIR/tokenizer.json")
        return HFTokenizer, {"path": path}
    cls, options = KINDS[kind], {}
    for part in parts:
        if part.isdigit() and cls.sized:
            options["vocab_size"] = int(part)
        elif part in cls.flags:
            options[part] = True
        else:
            takes = (["a vocabulary size"] if cls.sized else []) + list(cls.flags)
            raise TokenizerError(f"tokenizer spec {spec!r}: {kind} takes {' or '.join(takes) or 'no options'}, "
                                 f"not {part!r}")
    return cls, options


def spec_vocab_size(spec: str) -> int | None:
    """The vocabulary size a spec gives at most (gpt2's fixed 50,257, word:SIZE, bpe:SIZE, their
    defaults), or None when the corpus decides it (char)."""
    cls, options = parse_spec(spec)
    return int(options.get("vocab_size", cls.default_vocab_size or 0)) or None


def spec_identity(spec: str) -> str:
    """What decides the tokenizer a spec builds, for cache keys: the spec itself, plus the files'
    sha256 for `hf:PATH` (so an edited tokenizer.json is not mistaken for the old one)."""
    cls, options = parse_spec(spec)
    return f"{spec}#{source_digest(str(options['path']))}" if cls is HFTokenizer else spec


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

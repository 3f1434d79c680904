"""The tokenizer interface every tokenizer implements.

A tokenizer turns text into integer ids and back, knows its vocabulary size and special ids,
and saves itself into a directory (a run or data directory) as `tokenizer.tinylm.json`, which
names its kind so `tinylm.tokenizers.load_tokenizer` can restore it.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Iterable, Sequence

from tinylm import fileio

TOKENIZER_FILE = "tokenizer.tinylm.json"
_LINE_START = re.compile(r"(?<=\S)\n(?=\S)")


def safe_chunks(text: str, size: int = 1 << 16) -> list[str]:
    """Cut `text` into pieces of about `size` characters, each ending just after a line break
    with a non-space character on both sides. Every tinylm tokenizer's pre-tokenizer has a
    boundary there (and none joins a lone "\n" to what follows), so encoding the pieces
    separately, in parallel, gives the same ids as encoding the whole text."""
    pieces, start = [], 0
    while len(text) - start > size:
        cut = _LINE_START.search(text, start + size)
        if cut is None:
            break
        pieces.append(text[start:cut.end()])
        start = cut.end()
    pieces.append(text[start:])
    return pieces


class Tokenizer(ABC):
    kind: ClassVar[str]  # the registry name: "char", ...
    unit: ClassVar[str] = "character"  # what `count_unknown` counts, for messages
    sized: ClassVar[bool] = False  # a spec may give a vocabulary size ("bpe:4096")
    flags: ClassVar[tuple[str, ...]] = ()  # boolean options a spec may name ("word:lower")
    default_vocab_size: ClassVar[int | None] = None  # fixed or default size; None: decided by the corpus

    needs_corpus: ClassVar[bool] = True  # built from the training text (False: a given vocabulary, gpt2 and hf)

    eot_id: int | None = None  # end-of-text: separates documents, stops generation
    bos_id: int | None = None  # start-of-text: opens every document (the word tokenizer's <sos>)
    unk_id: int | None = None  # what text outside the vocabulary maps to
    add_bos: bool = False  # prompts begin with bos_id too, as the original tokenizer does (hf: Llama's <s>)
    chunk_safe: bool = True  # `safe_chunks` pieces encode to the ids of the whole text (else: encode whole)

    @classmethod
    @abstractmethod
    def train(cls, texts: Iterable[str], **options: Any) -> Tokenizer:
        """Build a tokenizer from a corpus (an iterable of documents)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many documents (tokenizers backed by native code do this in parallel)."""
        return [self.encode(t) for t in texts]

    def encode_long(self, text: str) -> list[int]:
        """`encode` for long texts: cut at safe places and encoded as a batch."""
        chunks = safe_chunks(text) if self.chunk_safe else [text]
        return self.encode(text) if len(chunks) == 1 else [i for ids in self.encode_batch(chunks) for i in ids]

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The complete state as JSON-serialisable data (inverse of `from_dict`)."""

    @classmethod
    @abstractmethod
    def from_dict(cls, state: dict[str, Any]) -> Tokenizer: ...

    def count_unknown(self, text: str) -> int:
        """How many pieces of `text` fall outside the vocabulary (0 for byte-level tokenizers)."""
        return 0

    def start_ids(self) -> list[int]:
        """Ids to condition on when the prompt is empty."""
        if self.bos_id is not None:
            return [self.bos_id]
        if self.eot_id is not None:
            return [self.eot_id]
        return self.encode("\n") or [0]

    def prompt_ids(self, text: str) -> list[int]:
        """A prompt's ids: `encode(text)`, after bos_id when the tokenizer adds it to every input
        (`add_bos`, as transformers' Llama tokenizers do); a prompt that encodes to no ids (empty, or
        whitespace for word) is the empty prompt, `start_ids()`. Code that takes user text calls
        `tinylm.inputs.encode_text`, which names the item in errors."""
        ids = self.encode(text) if text else []
        if not ids:
            return self.start_ids()
        return [self.bos_id, *ids] if self.add_bos and self.bos_id is not None else ids

    @property
    def stop_ids(self) -> list[int]:
        """Ids that end generation: end-of-text (hf: also generation_config.json's other eos ids)."""
        return [self.eot_id] if self.eot_id is not None else []

    @property
    def suppressed_ids(self) -> set[int]:
        """Ids that generation never emits unless asked (`GenerationConfig.suppress_tokens`): the
        unknown id (what text outside the vocabulary maps to is no text to write; for char it is
        never even a training target) and the start-of-text marker (it opens documents; the model
        continues after it). Padded embedding rows past `vocab_size` are never generated either.
        A stop id is never suppressed (hf: GPT-2's unk token is its end-of-text)."""
        return {i for i in (self.unk_id, self.bos_id) if i is not None} - set(self.stop_ids)

    @property
    def markers(self) -> set[int]:
        """The document markers (start- and end-of-text, stop ids), left out of generated text."""
        return {i for i in (self.bos_id, self.eot_id, *self.stop_ids) if i is not None}

    def fingerprint(self) -> str:
        """sha256 of the canonical state: two tokenizers with equal fingerprints encode alike."""
        canonical = json.dumps({"kind": self.kind, **self.to_dict()}, sort_keys=True, ensure_ascii=True)
        return fileio.sha256_bytes(canonical.encode())

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / TOKENIZER_FILE
        fileio.write_json(path, {"kind": self.kind, "format": 1, **self.to_dict()})
        return path

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"

"""The tokenizer interface every tokenizer implements.

A tokenizer turns text into integer ids and back, knows its vocabulary size and special ids,
and saves itself into a directory (a run or data directory) as `tokenizer.tinylm.json`, which
names its kind so `tinylm.tokenizers.load_tokenizer` can restore it.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Iterable, Sequence

from tinylm import fileio

TOKENIZER_FILE = "tokenizer.tinylm.json"


class Tokenizer(ABC):
    kind: ClassVar[str]  # the registry name: "char", ...

    eot_id: int | None = None  # end-of-text: separates documents, stops generation
    unk_id: int | None = None  # what text outside the vocabulary maps to

    @classmethod
    @abstractmethod
    def train(cls, texts: Iterable[str], **options: Any) -> Tokenizer:
        """Build a tokenizer from a corpus (an iterable of documents)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

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
        if self.eot_id is not None:
            return [self.eot_id]
        return self.encode("\n") or [0]

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

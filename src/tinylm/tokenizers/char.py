"""Character-level tokenizer: one id per Unicode character seen in the corpus.

Id 0 is `<unk>`, which every character outside the vocabulary maps to and which decodes to
U+FFFD (the replacement character); ids 1.. are the corpus characters in code-point order.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from tinylm.errors import TokenizerError
from tinylm.tokenizers.base import ANY_CUTS, Tokenizer

UNK_MARKER = "\ufffd"


class CharTokenizer(Tokenizer):
    kind = "char"
    unk_id = 0
    cuts = ANY_CUTS

    def __init__(self, chars: Sequence[str]):
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise TokenizerError("a char vocabulary must list distinct single characters")
        self.chars = sorted(chars)
        self.itos = [UNK_MARKER, *self.chars]
        # Sorted code points let numpy map a whole text to ids with one searchsorted.
        self._points = np.array([ord(c) for c in self.chars], dtype=np.uint32)

    @classmethod
    def train(cls, texts: Iterable[str], **options: Any) -> CharTokenizer:
        if options:
            raise TokenizerError(f"the char tokenizer takes no options, got {options}")
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        if not seen:
            raise TokenizerError("cannot build a char vocabulary from an empty corpus")
        return cls(sorted(seen))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def _lookup(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        pos = np.searchsorted(self._points, points)
        pos_clipped = np.minimum(pos, len(self._points) - 1)
        known = self._points[pos_clipped] == points
        return np.where(known, pos_clipped + 1, self.unk_id), known

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """Vectorised encode for whole corpora."""
        return self._lookup(text)[0] if text else np.zeros(0, dtype=np.int64)

    def encode_offsets(self, text: str) -> tuple[list[int], list[int]]:
        return self.encode(text), list(range(1, len(text) + 1))

    def count_unknown(self, text: str) -> int:
        return int((~self._lookup(text)[1]).sum()) if text else 0

    def decode(self, ids: Sequence[int]) -> str:
        itos, n = self.itos, len(self.itos)
        return "".join(itos[i] if 0 <= i < n else UNK_MARKER for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> CharTokenizer:
        return cls(list(state["chars"]))

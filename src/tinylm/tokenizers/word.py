"""Word-level tokenizer: a regex splits text into words, numbers, punctuation and line breaks.

Ids 0-3 are the special tokens `<pad> <unk> <sos> <eos>`; the rest of the vocabulary is the
most frequent tokens of the training text (ties broken alphabetically), capped at `vocab_size`
ids in all. Words outside the vocabulary encode to `<unk>`. Prepared data wraps every document
in `<sos> ... <eos>`; the four special tokens written in a text (a prompt such as
"<sos> spot saw the") encode to their ids, so what decoding shows can be typed back. Spacing is not stored: decoding
puts one space between tokens except around punctuation and line breaks, so what round-trips
is the *normalized* text (`normalize`): single spaces, no space before `.,;:!?)]}`, none after
`([{`, hyphens and dashes joined tightly, straight quotes hugging what they enclose, optional
lower-casing (`lowercase`).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np
from tokenizers import normalizers

from tinylm.errors import TokenizerError
from tinylm.tokenizers.base import WHITESPACE_CUTS, Tokenizer

SPECIALS = ("<pad>", "<unk>", "<sos>", "<eos>")
PAD_ID, UNK_ID, SOS_ID, EOS_ID = range(4)
DEFAULT_VOCAB_SIZE = 30_000

# The special tokens are tokens of their own. A word may carry inner apostrophes (don't, o'er,
# king's); numbers keep inner . and , (3.14, 1,000); every other non-space character is a token of
# its own; so is a line break.
TOKEN_RE = re.compile(r"<(?:pad|unk|sos|eos)>|[^\W\d_]+(?:['’][^\W\d_]+)*|\d+(?:[.,]\d+)*|\n|[^\w\s]|_")

NO_SPACE_BEFORE = set(".,;:!?)]}%…’-—/\n")
NO_SPACE_AFTER = set("([{$‘-—/\n")
QUOTES = set("\"'")  # straight quotes open and close alternately


_LOWERCASE = normalizers.Lowercase()


def lowercase(text: str) -> str:
    """`word:lower`'s lower-casing: Hugging Face `tokenizers`' Lowercase (Rust's Unicode tables, no
    final-sigma rule), so the exported tokenizer.json lower-cases exactly alike (Python's
    `str.lower` follows an older Unicode in older Pythons and writes a final sigma as ς)."""
    try:
        return _LOWERCASE.normalize_str(text)
    except Exception:  # text Rust cannot hold (lone surrogates): no exported tokenizer can read it either
        return text.lower()


def detokenize(tokens: Sequence[str]) -> str:
    """Join tokens into readable text (the inverse of splitting, up to spacing)."""
    out: list[str] = []
    quote_open = {q: False for q in QUOTES}
    prev = "\n"
    for tok in tokens:
        space = prev not in NO_SPACE_AFTER and tok not in NO_SPACE_BEFORE
        if tok in QUOTES:
            space = space and not quote_open[tok]  # a closing quote hugs the word before it
            quote_open[tok] = not quote_open[tok]
        elif prev in QUOTES and quote_open[prev]:
            space = False  # an opening quote hugs the word after it
        if space:
            out.append(" ")
        out.append(tok)
        prev = tok
    return "".join(out)


class WordTokenizer(Tokenizer):
    kind = "word"
    unit = "word"
    unk_id = UNK_ID
    eot_id = EOS_ID  # ends documents and stops generation
    eot_text = "<eos>"
    bos_id = SOS_ID  # opens documents
    sized = True
    flags = ("lower",)
    default_vocab_size = DEFAULT_VOCAB_SIZE
    cuts = WHITESPACE_CUTS

    def __init__(self, words: Sequence[str], lower: bool = False):
        if len(set(words)) != len(words) or set(words) & set(SPECIALS):
            raise TokenizerError("a word vocabulary must list distinct words and no special tokens")
        self.lower = lower
        self.itos = [*SPECIALS, *words]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def split(self, text: str) -> list[str]:
        return TOKEN_RE.findall(lowercase(text) if self.lower else text)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, lower: bool = False,
              **options: Any) -> WordTokenizer:
        if options:
            raise TokenizerError(f"the word tokenizer does not take {', '.join(options)}")
        if vocab_size <= len(SPECIALS):
            raise TokenizerError(f"a word vocabulary needs more than the {len(SPECIALS)} special tokens; "
                                 f"got vocab_size {vocab_size}")
        splitter = cls([], lower)
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(splitter.split(text))
        for special in SPECIALS:  # a literal "<unk>" in the text is its special token, not a word
            counts.pop(special, None)
        if not counts:
            raise TokenizerError("cannot build a word vocabulary from an empty corpus")
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # most frequent, then alphabetical
        return cls([w for w, _ in ranked[: vocab_size - len(SPECIALS)]], lower)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        get = self.stoi.get
        return [get(tok, UNK_ID) for tok in self.split(text)]

    def encode_offsets(self, text: str) -> tuple[list[int], list[int]]:
        source = text.lower() if self.lower else text
        matches = list(TOKEN_RE.finditer(source))
        get = self.stoi.get
        ids, ends = [get(m.group(), UNK_ID) for m in matches], [m.end() for m in matches]
        if len(source) != len(text):  # lower() lengthened a character (e.g. U+0130): map back to `text`
            lowered_starts = np.cumsum([0] + [len(c.lower()) for c in text[:-1]])
            ends = np.searchsorted(lowered_starts, ends, side="left").tolist()
        return ids, ends

    def decode(self, ids: Sequence[int]) -> str:
        n = len(self.itos)
        return detokenize([self.itos[i] if 0 <= i < n else "<unk>" for i in ids if i != PAD_ID])

    @property
    def suppressed_ids(self) -> set[int]:
        """`<pad>`, `<unk>` and `<sos>`: never generated unless asked (see Tokenizer.suppressed_ids)."""
        return {PAD_ID, UNK_ID, SOS_ID}

    def normalize(self, text: str) -> str:
        """What `decode(encode(text))` gives when every word of `text` is in the vocabulary."""
        return detokenize([tok for tok in self.split(text) if tok != SPECIALS[PAD_ID]])

    def count_unknown(self, text: str) -> int:
        return sum(tok not in self.stoi for tok in self.split(text))

    def to_dict(self) -> dict[str, Any]:
        return {"lower": self.lower, "words": self.itos[len(SPECIALS):]}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> WordTokenizer:
        return cls(state["words"], bool(state["lower"]))

"""The tokenizer interface every tokenizer implements.

A tokenizer turns text into integer ids and back, knows its vocabulary size and special ids,
and saves itself into a directory (a run or data directory) as `tokenizer.tinylm.json`, which
names its kind so `tinylm.tokenizers.load_tokenizer` can restore it. `cuts` says where a text may
be cut so that its pieces encode to the whole text's ids (`safe_chunks` for parallel encoding,
`PieceCutter` for documents that arrive in pieces cut anywhere).
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Sequence

import numpy as np

from tinylm import fileio

TOKENIZER_FILE = "tokenizer.tinylm.json"

# Where a text may be cut so that its pieces, encoded one by one, give the ids of the whole text:
# zero-width patterns, each position proved for a family of pre-tokenizers (tests check every
# position of random texts, per tokenizer kind). "Space" is one of " \t\n\r", which every
# tokenizer treats as whitespace (Python's and Rust's regexes, BERT's normalizer); `\S` is
# Python's, which counts more characters as whitespace than Unicode does (stricter, never looser).
LINE_CUTS = re.compile(r"(?<=\S[\n\r])(?=\S)")
"""After a lone line break between non-space characters: every pre-tokenizer has a boundary there
and none joins a lone break to what follows (the cut `safe_chunks` makes by default)."""
GPT2_CUTS = re.compile(r"(?<=\S[\n\r])(?=\S)|(?<=\S)(?=[ \t\n\r])")
"""GPT-2's regex (tiktoken's r50k, Hugging Face ByteLevel): also before the whitespace after a
non-space character, since only a single leading " " ever joins a word, number or punctuation."""
CL100K_CUTS = re.compile(r"(?<=[\n\r])(?=\S)|(?<=\S)(?=[ \t])")
"""GPT-4's cl100k regex (tinylm's bpe, Llama 3, Qwen2): after any run of line breaks before a
non-space character (a run is one piece, with the punctuation before it), and before a space or
tab after a non-space character; not before a line break (punctuation takes the breaks after it)."""
WHITESPACE_CUTS = re.compile(r"(?<=[ \t\n\r])|(?=[ \t\n\r])")
"""Next to any space: for pre-tokenizers whose pieces never hold one (the word tokenizer's regex, a
line break alone; Hugging Face Whitespace, WhitespaceSplit and BERT's)."""
ANY_CUTS = re.compile(r"(?s)(?<=.)(?=.)")
"""Anywhere (the char tokenizer: one id per character)."""


def safe_chunks(text: str, size: int = 1 << 16, cuts: re.Pattern[str] | None = LINE_CUTS) -> list[str]:
    """Cut `text` into pieces of about `size` characters (at least `size` each but the last),
    each ending at a position `cuts` allows: with the tokenizer's own `cuts`, encoding the pieces
    separately, in parallel, gives the same ids as encoding the whole text. `cuts=None`: no cut."""
    pieces, start = [], 0
    while cuts is not None and len(text) - start > size:
        cut = cuts.search(text, start + size)
        if cut is None or cut.start() >= len(text):
            break
        pieces.append(text[start:cut.start()])
        start = cut.start()
    pieces.append(text[start:])
    return pieces


def _last_cut(cuts: re.Pattern[str], text: str, start: int) -> int:
    """The last position >= `start` (and > 0) where `cuts` allows a cut in `text`, or -1."""
    width = 256
    while True:
        lo = max(start, len(text) - width)
        last = -1
        for match in cuts.finditer(text, lo):
            last = match.start()
        if last > 0:
            return last
        if lo == start:
            return -1
        width *= 16


class PieceCutter:
    """Re-cuts one document's text, arriving in pieces cut anywhere, into pieces that end only where
    `cuts` allows (None: nowhere, the document is held whole): `add` gives the pieces ready once
    `size` characters are held, `end` the rest. Each character is searched about once, and what is
    held is the text since the last allowed cut (at least `size` characters before looking for one)."""

    def __init__(self, cuts: re.Pattern[str] | None, size: int):
        self.cuts, self.size = cuts, size
        self.searched: list[str] = []  # held text already searched: no cut in it (but maybe at its end)
        self.pending: list[str] = []  # held text not searched yet
        self.held = 0  # characters held
        self.tail = ""  # the last 2 characters of `searched` (the context of a cut at its end)

    def add(self, text: str) -> Iterator[str]:
        self.pending.append(text)
        self.held += len(text)
        if self.cuts is None or self.held < self.size:
            return
        new = "".join(self.pending)
        window = self.tail + new
        cut = _last_cut(self.cuts, window, len(self.tail))
        if cut < 0:
            self.searched.append(new)
            self.pending, self.tail = [], window[-2:]
            return
        rest = window[cut:]
        yield "".join(self.searched) + window[len(self.tail):cut]
        self.searched, self.pending, self.held, self.tail = [rest], [], len(rest), rest[-2:]

    def end(self) -> str:
        """The held text (the end of the document); the cutter is empty afterwards."""
        text = "".join(self.searched + self.pending)
        self.searched, self.pending, self.held, self.tail = [], [], 0, ""
        return text


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
    eot_text: str | None = None  # text that `encode` reads as eot_id (a special token matched in text), if any
    pad_id: int | None = None  # the padding token the original tokenizer names (hf), for exports
    cuts: re.Pattern[str] | None = LINE_CUTS  # where a text may be cut and encoded in pieces (None: nowhere)

    @property
    def bos_token_id(self) -> int | None:
        """The beginning-of-sequence token for exports (config.json, GGUF): `bos_id`, or for hf the original
        tokenizer's BOS even when it is not added to inputs."""
        return self.bos_id

    @property
    def chat_template(self) -> str | None:
        """A Jinja chat template the tokenizer brings (hf: the imported model's own), else None."""
        return None

    @property
    def source_files(self) -> dict[str, str]:
        """Files the tokenizer was read from, kept verbatim to be written back by exports (hf: tokenizer.json,
        its config files, generation_config.json), by name; {} for tinylm's own kinds."""
        return {}

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

    @property
    def chunk_safe(self) -> bool:
        """Whether a long text may be cut into pieces at all (`cuts`) and encoded piece by piece."""
        return self.cuts is not None

    def encode_long(self, text: str) -> list[int]:
        """`encode` for long texts: cut at safe places and encoded as a batch."""
        chunks = safe_chunks(text, cuts=self.cuts)
        return self.encode(text) if len(chunks) == 1 else [i for ids in self.encode_batch(chunks) for i in ids]

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes token `token_id` stands for (byte-level tokenizers)."""
        raise NotImplementedError(f"the {self.kind} tokenizer has no per-token bytes")

    def encode_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """`encode(text)` and, for each token, where it ends in `text`: the number of characters
        that the tokens up to and including it cover (a token ending inside a character's UTF-8
        bytes covers that character). Fine-tuning uses it to tell prompt from response tokens."""
        ids = self.encode(text)
        char_starts = np.cumsum([0] + [len(c.encode("utf-8")) for c in text[:-1]]) if text else np.zeros(0)
        byte_ends = np.cumsum([len(self.token_bytes(i)) for i in ids])
        return ids, np.searchsorted(char_starts, byte_ends, side="left").tolist()

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
        `tinylm.tokenizers.prompt.encode_text`, which names the item in errors."""
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

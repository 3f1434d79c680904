"""Byte-level BPE trained on your corpus with Hugging Face `tokenizers` (Rust, multi-threaded).

GPT-2's design with GPT-4's pre-tokenizer: text is split into pieces by the cl100k regex
(words with their leading space or punctuation, numbers of up to three digits, punctuation
runs with the line breaks after them, runs of line breaks), each piece is seen as UTF-8
bytes (all 256 are in the vocabulary, so nothing is ever unknown), and the most frequent
adjacent pairs are merged until the vocabulary has `vocab_size` entries. On tinyshakespeare
at 2,048 tokens the cl100k split gives 8% fewer tokens than GPT-2's regex (BENCHMARKS.md). `<|endoftext|>` (id 0)
separates documents. Besides tinylm's own file, `save` writes a standard `tokenizer.json`
that `tokenizers.Tokenizer.from_file` and `transformers.PreTrainedTokenizerFast` load directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

from tinylm import fileio
from tinylm.errors import TokenizerError
from tinylm.tokenizers.base import CL100K_CUTS, Tokenizer

EOT = "<|endoftext|>"
HF_FILE = "tokenizer.json"
DEFAULT_VOCAB_SIZE = 4096
MIN_VOCAB_SIZE = 256 + 1  # every byte, plus <|endoftext|>
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level mapping (`bytes_to_unicode`), inverted: the character standing for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_OF_CHAR = _byte_level_alphabet()


class BPETokenizer(Tokenizer):
    kind = "bpe"
    eot_text = EOT
    default_vocab_size = DEFAULT_VOCAB_SIZE
    eot_id = 0
    sized = True
    cuts = CL100K_CUTS

    def __init__(self, hf: HFTokenizer):
        if hf.token_to_id(EOT) != self.eot_id:
            raise TokenizerError(f"a bpe tokenizer must have {EOT} as id {self.eot_id}")
        self.hf = hf

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, **options: Any) -> BPETokenizer:
        if options:
            raise TokenizerError(f"the bpe tokenizer does not take {', '.join(options)}")
        if vocab_size < MIN_VOCAB_SIZE:
            raise TokenizerError(f"bpe vocabulary size {vocab_size} is below {MIN_VOCAB_SIZE} (the 256 byte "
                                 f"values plus {EOT}); choose e.g. bpe:4096")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        seen = 0

        def counted() -> Iterable[str]:
            nonlocal seen
            for text in texts:
                seen += len(text)
                yield text

        hf.train_from_iterator(counted(), trainer=trainer)
        if not seen:
            raise TokenizerError("cannot train a bpe vocabulary on an empty corpus")
        return cls(hf)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def token_bytes(self, token_id: int) -> bytes:
        token = self.hf.id_to_token(token_id)
        if token_id == self.eot_id or token is None:
            return (token or "").encode("utf-8")  # a special token stands for its own text
        return bytes(_BYTE_OF_CHAR[c] for c in token)

    def decode(self, ids: Sequence[int]) -> str:
        n = self.vocab_size
        # ids past the vocabulary (a padded embedding table) become a byte that is never valid UTF-8
        return self.hf.decode([i if 0 <= i < n else self.hf.token_to_id("ÿ") for i in ids],
                              skip_special_tokens=False)

    def to_dict(self) -> dict[str, Any]:
        return {"tokenizer_json": json.loads(self.hf.to_str())}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> BPETokenizer:
        try:
            return cls(HFTokenizer.from_str(json.dumps(state["tokenizer_json"])))
        except Exception as e:  # tokenizers raises its own exception type for malformed JSON
            raise TokenizerError(f"the bpe tokenizer state is corrupt ({e})") from None

    def save(self, directory: str | Path) -> Path:
        fileio.write_text(Path(directory) / HF_FILE, self.hf.to_str(pretty=True))
        return super().save(directory)

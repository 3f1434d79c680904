"""GPT-2's byte-level BPE (50,257 ids, `<|endoftext|>` = 50256) through tiktoken, offline.

tiktoken normally downloads `encoder.json` and `vocab.bpe` on first use. tinylm ships both
files (xz-compressed, with OpenAI's licence and a provenance record, see
scripts/build_gpt2_vocab.py), checks them against the sha256 that tiktoken pins for the
official files, and builds the same `tiktoken.Encoding` that `tiktoken.get_encoding("gpt2")`
would, so ids are identical and no network is touched.
"""

from __future__ import annotations

import functools
import lzma
from pathlib import Path
from typing import Any, Iterable, Sequence

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

from tinylm import fileio
from tinylm.errors import TokenizerError
from tinylm.tokenizers.base import GPT2_CUTS, Tokenizer

ASSETS = Path(__file__).resolve().parent / "assets" / "gpt2"
_BLOB = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
OFFICIAL_URLS = {"encoder.json": _BLOB + "encoder.json", "vocab.bpe": _BLOB + "vocab.bpe"}
OFFICIAL_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
VOCAB_SIZE = 50_257
EOT_ID = 50_256


def vocab_files() -> dict[str, Path]:
    """The official GPT-2 files, unpacked once into the tinylm cache and verified."""
    directory = fileio.cache_root() / "gpt2"
    files = {}
    for name, expected in OFFICIAL_SHA256.items():
        path = files[name] = directory / name
        if path.is_file() and fileio.sha256_file(path) == expected:
            continue
        packed = ASSETS / f"{name}.xz"
        try:
            data = lzma.decompress(packed.read_bytes())
        except (OSError, lzma.LZMAError) as e:
            raise TokenizerError(f"the bundled GPT-2 file {packed} is unreadable ({e}); reinstall tinylm") from None
        if fileio.sha256_bytes(data) != expected:
            raise TokenizerError(f"the bundled GPT-2 {name} does not match the official sha256; reinstall tinylm")
        directory.mkdir(parents=True, exist_ok=True)
        fileio.write_bytes(path, data)
    return files


@functools.cache
def gpt2_encoding() -> tiktoken.Encoding:
    files = vocab_files()
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(files["vocab.bpe"]), encoder_json_file=str(files["encoder.json"]),
        vocab_bpe_hash=OFFICIAL_SHA256["vocab.bpe"], encoder_json_hash=OFFICIAL_SHA256["encoder.json"])
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: EOT_ID}, explicit_n_vocab=VOCAB_SIZE)


class GPT2Tokenizer(Tokenizer):
    kind = "gpt2"
    needs_corpus = False
    eot_id = EOT_ID
    default_vocab_size = VOCAB_SIZE
    cuts = GPT2_CUTS

    def __init__(self) -> None:
        self.encoding = gpt2_encoding()

    @classmethod
    def train(cls, texts: Iterable[str], **options: Any) -> GPT2Tokenizer:
        if options:
            raise TokenizerError(f"the gpt2 tokenizer has a fixed vocabulary; it takes no {', '.join(options)}")
        return cls()

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        # "<|endoftext|>" written in the text is plain text; documents are separated by eot_id
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts)

    def token_bytes(self, token_id: int) -> bytes:
        return self.encoding.decode_single_token_bytes(token_id)

    def decode(self, ids: Sequence[int]) -> str:
        if all(0 <= i < VOCAB_SIZE for i in ids):
            return self.encoding.decode(list(ids), errors="replace")
        # ids of a padded embedding table (>= 50257) have no text: they decode to U+FFFD
        pieces = [self.encoding.decode_single_token_bytes(i) if 0 <= i < VOCAB_SIZE else b"\xff" for i in ids]
        return b"".join(pieces).decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        return {"encoding": "gpt2", "sha256": OFFICIAL_SHA256}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> GPT2Tokenizer:
        if state.get("sha256") != OFFICIAL_SHA256:
            raise TokenizerError("this gpt2 tokenizer file names vocabulary files other than GPT-2's")
        return cls()

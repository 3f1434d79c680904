"""Any tinylm tokenizer as a standard Hugging Face fast tokenizer (`tokenizer.json`).

`export_tokenizer(tok, out_dir)` writes `tokenizer.json`, `tokenizer_config.json` and
`special_tokens_map.json`, which `transformers.AutoTokenizer.from_pretrained(out_dir)` loads as
a `PreTrainedTokenizerFast` with no custom code, encoding text to the same ids as tinylm:

    gpt2   byte-level BPE from the bundled encoder.json + vocab.bpe (GPT-2's regex, no prefix space)
    bpe    the tokenizer's own `tokenizers.Tokenizer`
    char   WordLevel over the characters: every character (newlines and spaces too) is a piece,
           an unknown one is the unk token U+FFFD (id 0); the decoder fuses pieces without spaces
    word   WordLevel over the words, split by the same regex as tinylm (TOKEN_RE; whitespace
           dropped), lower-cased first for `word:lower`; unknown words are `<unk>`
    hf     the original files, unchanged

Special tokens written in the text (`<|endoftext|>`, `<unk>`) are plain text for gpt2, char and
word, as in tinylm (`split_special_tokens`), and special for bpe, as in tinylm. Differences: word decoding joins
tokens with single spaces (tinylm's detokenizer hugs punctuation); regex classes (`\\w`, `\\d`)
follow Oniguruma's Unicode definitions, which differ from Python's for rare characters such as
combining marks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from tinylm.tokenizers.base import Tokenizer

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"


def _gpt2() -> tuple[HFTokenizer, dict[str, str]]:
    from tinylm.tokenizers.gpt2 import EOT_ID, vocab_files

    files = vocab_files()
    vocab = json.loads(files["encoder.json"].read_text(encoding="utf-8"))
    lines = files["vocab.bpe"].read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]  # first line: "#version: 0.2"
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    eot = "<|endoftext|>"
    hf.add_special_tokens([eot])
    if hf.token_to_id(eot) != EOT_ID:
        raise ValueError(f"the GPT-2 vocabulary should put {eot} at id {EOT_ID}")
    return hf, {"bos_token": eot, "eos_token": eot, "unk_token": eot}


def _bpe(tok: Any) -> tuple[HFTokenizer, dict[str, str]]:
    from tinylm.tokenizers.bpe import EOT

    hf = HFTokenizer.from_str(tok.hf.to_str())
    return hf, {"bos_token": EOT, "eos_token": EOT}


def _char(tok: Any) -> tuple[HFTokenizer, dict[str, str]]:
    unk = tok.itos[tok.unk_id]
    hf = HFTokenizer(models.WordLevel(vocab={c: i for i, c in enumerate(tok.itos)}, unk_token=unk))
    # every character is a piece of its own ("." would skip line breaks)
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    hf.decoder = decoders.Fuse()
    hf.add_special_tokens([unk])
    return hf, {"unk_token": unk}


def _word(tok: Any) -> tuple[HFTokenizer, dict[str, str]]:
    from tinylm.tokenizers.word import SPECIALS, TOKEN_RE

    pad, unk, sos, eos = SPECIALS
    hf = HFTokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(tok.itos)}, unk_token=unk))
    if tok.lower:
        hf.normalizer = normalizers.Lowercase()
    # keep what TOKEN_RE matches (re.findall), drop what lies between (whitespace)
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(TOKEN_RE.pattern), behavior="removed", invert=True)
    hf.add_special_tokens(list(SPECIALS))
    return hf, {"pad_token": pad, "unk_token": unk, "bos_token": sos, "eos_token": eos}


def hf_tokenizer(tokenizer: Tokenizer) -> tuple[HFTokenizer, dict[str, str]]:
    """The equivalent `tokenizers.Tokenizer` and its special tokens (transformers' names)."""
    kind = tokenizer.kind
    if kind == "gpt2":
        return _gpt2()
    if kind == "bpe":
        return _bpe(tokenizer)
    if kind == "char":
        return _char(tokenizer)
    if kind == "word":
        return _word(tokenizer)
    if kind == "hf":
        return HFTokenizer.from_str(tokenizer.hf.to_str()), {}
    raise ValueError(f"no Hugging Face export for the {kind!r} tokenizer")


def export_tokenizer(tokenizer: Tokenizer, out_dir: Path, *, model_max_length: int | None = None) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`
    (an `hf` tokenizer: its original files, unchanged)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer.kind == "hf":
        tokenizer.save_files(out_dir)
        return
    hf, specials = hf_tokenizer(tokenizer)
    hf.save(str(out_dir / TOKENIZER_JSON), pretty=True)
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        # tinylm's gpt2 and char encode special tokens written in the text as plain text; bpe and word match them
        "split_special_tokens": tokenizer.kind not in ("bpe", "word"),
        "add_bos_token": False,
        "add_eos_token": False,
        **specials,
    }
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    (out_dir / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / SPECIAL_TOKENS_MAP).write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n",
                                              encoding="utf-8")

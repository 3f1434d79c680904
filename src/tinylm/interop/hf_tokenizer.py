"""Any tinylm tokenizer as a standard Hugging Face fast tokenizer (`tokenizer.json`).

`export_tokenizer(tok, out_dir)` writes `tokenizer.json`, `tokenizer_config.json` and
`special_tokens_map.json`, which `transformers.AutoTokenizer.from_pretrained(out_dir)` loads as
a `PreTrainedTokenizerFast` with no custom code, encoding text to the same ids as tinylm:

    gpt2   byte-level BPE from the bundled encoder.json + vocab.bpe (GPT-2's regex, no prefix space)
    bpe    the tokenizer's own `tokenizers.Tokenizer`
    char   WordLevel over the characters: every character (newlines and spaces too) is a piece,
           an unknown one is the unk token `<unk>` (id 0, decoded as U+FFFD as in tinylm; a U+FFFD
           of the corpus keeps its own id); the decoder fuses pieces without spaces
    word   WordLevel over the words, split by the same regex as tinylm (TOKEN_RE, with Python's
           `\\w`/`\\d`/`\\s` spelled out as code-point ranges so Oniguruma matches the same characters;
           whitespace dropped), lower-cased first for `word:lower` (the same Lowercase normalizer
           tinylm uses); unknown words are `<unk>`
    hf     the original files, unchanged

Special tokens written in the text (`<|endoftext|>`, `<unk>`) are plain text for gpt2 and char,
as in tinylm (`split_special_tokens`), and special for bpe and word, as in tinylm. The ids and
the vocabulary size (`len(tokenizer)`) equal tinylm's on every text (a property test checks
this for every kind, tests/test_tokenizer_export_property.py). A fine-tuned run's prompt template
is written as `chat_template` (`Template.jinja()`), so `apply_chat_template` gives tinylm's ids; it
writes the end-of-text token as `eos_token` text, which gpt2 must then read as the special token
(`split_special_tokens` false: `<|endoftext|>` typed in a message also becomes it). Difference: word
decoding joins tokens with single spaces (tinylm's detokenizer hugs punctuation).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from tinylm import fileio
from tinylm.chat.templates import Template
from tinylm.tokenizers.base import Tokenizer

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
UNK = "<unk>"  # the exported char tokenizer's name for its unknown id


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
    # the unknown id needs a name no character has: tinylm writes it as U+FFFD, which may also be a
    # character of the corpus (text prepared with --errors replace) with an id of its own
    vocab = {UNK: tok.unk_id, **{c: i for i, c in enumerate(tok.itos) if i != tok.unk_id}}
    hf = HFTokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # every character is a piece of its own ("." would skip line breaks)
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    hf.decoder = decoders.Sequence([decoders.Replace(UNK, tok.itos[tok.unk_id]), decoders.Fuse()])
    hf.add_special_tokens([UNK])
    return hf, {"unk_token": UNK}


def _ranges(points: list[int]) -> str:
    """Sorted code points as an Oniguruma character-class body of ranges (\\x{HHHH}-\\x{HHHH})."""
    out, start = [], None
    for i, p in enumerate(points):
        if start is None:
            start = p
        if i + 1 == len(points) or points[i + 1] != p + 1:
            out.append(f"\\x{{{start:X}}}" + (f"-\\x{{{p:X}}}" if p != start else ""))
            start = None
    return "".join(out)


@functools.cache
def python_classes() -> dict[str, str]:
    """Python's Unicode classes `[^\\W\\d_]` (letters), `\\d`, `\\w` and `\\s` spelled out as explicit
    code-point ranges, so that Oniguruma (whose `\\w`, `\\d` and `\\s` differ from Python's for
    combining marks, superscript digits, fractions and the separators U+001C..U+001F) matches
    exactly the characters Python's `re` does."""
    import re

    text = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    classes = {"letter": r"[^\W\d_]", "digit": r"\d", "word": r"\w", "space": r"\s"}
    return {name: _ranges([ord(c) for c in re.findall(pattern, text)]) for name, pattern in classes.items()}


def oniguruma_pattern(pattern: str) -> str:
    """A Python `re` pattern built from `[^\\W\\d_]`, `[^\\w\\s]` and `\\d` with those classes spelled out
    (`python_classes`), for `tokenizers.Regex`."""
    c = python_classes()
    out = (pattern.replace(r"[^\W\d_]", f"[{c['letter']}]").replace(r"[^\w\s]", f"[^{c['word']}{c['space']}]")
           .replace(r"\d", f"[{c['digit']}]"))
    if any(cls in out for cls in (r"\w", r"\W", r"\s", r"\S", r"\D")):
        raise ValueError(f"the pattern {pattern!r} uses a class with no explicit spelling")
    return out


def _word(tok: Any) -> tuple[HFTokenizer, dict[str, str]]:
    from tinylm.tokenizers.word import SPECIALS, TOKEN_RE

    pad, unk, sos, eos = SPECIALS
    hf = HFTokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(tok.itos)}, unk_token=unk))
    if tok.lower:
        hf.normalizer = normalizers.Lowercase()
    # keep what TOKEN_RE matches (re.findall), drop what lies between (whitespace); Python's classes spelled out
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(oniguruma_pattern(TOKEN_RE.pattern)), behavior="removed",
                                            invert=True)
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


def export_tokenizer(tokenizer: Tokenizer, out_dir: Path, *, model_max_length: int | None = None,
                     chat_template: Template | None = None) -> None:
    """Write tokenizer.json, tokenizer_config.json (with `chat_template` when given) and
    special_tokens_map.json into `out_dir` (an `hf` tokenizer: its original files, unchanged, but the
    chat template)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # tokenizers that begin every input with BOS (Llama's) have the template write it (prompt_ids' rule)
    bos = tokenizer.add_bos and tokenizer.bos_id is not None
    jinja = chat_template.jinja(bos=bos) if chat_template is not None else None
    if tokenizer.kind == "hf":
        tokenizer.save_files(out_dir)
        if jinja is not None:  # the fine-tuned template replaces the original one (both places it may live)
            config = json.loads((out_dir / TOKENIZER_CONFIG).read_text(encoding="utf-8")) \
                if (out_dir / TOKENIZER_CONFIG).is_file() else {}
            config["chat_template"] = jinja
            fileio.write_text(out_dir / TOKENIZER_CONFIG, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
            if (out_dir / "chat_template.jinja").is_file():
                fileio.write_text(out_dir / "chat_template.jinja", jinja)
        return
    hf, specials = hf_tokenizer(tokenizer)
    fileio.write_text(out_dir / TOKENIZER_JSON, hf.to_str(pretty=True))  # atomic; a full disk names the file
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
    if jinja is not None:
        config["chat_template"] = jinja
        config["split_special_tokens"] = tokenizer.kind not in ("bpe", "word", "gpt2")
    fileio.write_text(out_dir / TOKENIZER_CONFIG, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    fileio.write_text(out_dir / SPECIAL_TOKENS_MAP, json.dumps(specials, indent=2, ensure_ascii=False) + "\n")

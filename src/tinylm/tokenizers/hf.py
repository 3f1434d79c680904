"""Any Hugging Face tokenizer (`tokenizer.json`) through the `tokenizers` library: the `hf` kind.

    hf:DIR or hf:DIR/tokenizer.json
        │  tokenizer.json            the model (BPE, byte-level BPE, SentencePiece-style BPE with byte
        │                            fallback, WordPiece, Unigram, WordLevel), normalizer, pre-tokenizer
        │  tokenizer_config.json     bos/eos/pad/unk tokens, add_bos_token, chat_template (optional)
        │  special_tokens_map.json   bos/eos/pad/unk tokens when tokenizer_config.json lacks them (optional)
        │  generation_config.json    eos_token_id (one id or a list of stop ids) (optional)
        │  chat_template.jinja       the chat template, as newer transformers save it (optional)
        ▼
    HFTokenizer: the files' text is its whole state (saved verbatim into run and data directories,
    so a run never depends on the original path, and exported back byte for byte)

Special ids follow transformers: the BOS token opens every document and every prompt when the
original tokenizer adds it (`add_bos_token` in tokenizer_config.json, else its post-processor:
Llama's `<s> $A`), so `bos_id` is set only then; `eot_id` is the EOS token (generation also stops
at every id of generation_config.json's `eos_token_id`); `unk_id` the unknown token. `encode` never
adds special tokens (documents and prompts get BOS from the callers); special tokens written in the
text encode to their ids, as in `AutoTokenizer`.

Long texts are cut (`Tokenizer.cuts`, for parallel encoding and bounded memory) only where the
tokenizer provably has a boundary: a per-character normalizer (or none), no added token that strips
spaces or spans a cut, and a pre-tokenizer whose cuts are known (`cut_pattern`: GPT-2's or Llama 3's
regex, whitespace splitting, BERT's). Others (SentencePiece-style tokenizers prepend "▁" to every
input and split nothing) encode each document whole.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from tokenizers import Tokenizer as RustTokenizer

from tinylm import fileio
from tinylm.errors import TokenizerError
from tinylm.config.fields import integer
from tinylm.tokenizers.base import CL100K_CUTS, GPT2_CUTS, WHITESPACE_CUTS, Tokenizer

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
GENERATION_CONFIG = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
OPTIONAL_FILES = (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, GENERATION_CONFIG, CHAT_TEMPLATE_FILE)
TOKENIZER_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, CHAT_TEMPLATE_FILE)  # what `save` writes

# The split regexes of well-known byte-level BPE tokenizers (as tokenizer.json spells them).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")  # also GPT-4's cl100k and tinylm's bpe
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PATTERNS = {LLAMA3_PATTERN: "llama3", QWEN2_PATTERN: "qwen2"}
# normalizers that map each character on its own and never make, drop or change " \t\n\r" (so a cut
# next to a space commutes with them, and the pre-tokenizer sees the same spaces)
_PER_CHAR_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents"}
# ... and those that also turn whitespace into " " (and drop control characters): fine where every
# space is a boundary (whitespace splitting), not for regexes that tell " " from "\n"
_SPACING_NORMALIZERS = {"BertNormalizer", "Nmt"}
# pre-tokenizers that only split pieces further (never join, never change or add text)
_SPLITTING_PRE_TOKENIZERS = {"Digits", "Punctuation", "UnicodeScripts"}
_WHITESPACE_SPLITTERS = {"Whitespace", "WhitespaceSplit", "BertPreTokenizer"}  # no piece holds a space
_SPACES = set(" \t\n\r")


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _per_char_normalizer(spec: dict | None, spacing: bool = False) -> bool:
    """Whether the normalizer commutes with a cut next to a space (`spacing`: it may also turn
    whitespace into " ")."""
    if spec is None:
        return True
    kind = spec.get("type")
    if kind == "Sequence":
        return all(_per_char_normalizer(n, spacing) for n in spec.get("normalizers", []))
    if kind == "Replace":  # a one-character string replaced by text without spaces (Llama's " " -> "▁" is not)
        pattern, content = spec.get("pattern", {}).get("String", ""), spec.get("content", "")
        return len(pattern) == 1 and isinstance(content, str) and not _SPACES & set(pattern + content)
    return kind in _PER_CHAR_NORMALIZERS or (spacing and kind in _SPACING_NORMALIZERS)


def split_family(pre: dict | None) -> str | None:
    """Which well-known regex a byte-level pre-tokenizer splits text with: "gpt2" (GPT-2's, built
    into ByteLevel), "digits+gpt2" (SmolLM: digits one by one, then GPT-2's), "llama3" (Llama 3,
    GPT-4's cl100k, tinylm's bpe), "qwen2"; None for anything else (or no byte-level step)."""
    if pre is None:
        return None
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    if len(byte_level) != 1 or byte_level[0].get("add_prefix_space") or steps[-1] is not byte_level[0]:
        return None
    if byte_level[0].get("use_regex", True):
        if kinds == ["ByteLevel"]:
            return "gpt2"
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
            return "digits+gpt2"
        return None
    if kinds == ["Split", "ByteLevel"]:
        split = steps[0]
        if split.get("behavior") == "Isolated" and not split.get("invert"):
            return SPLIT_PATTERNS.get(split.get("pattern", {}).get("Regex", ""))
    return None


def _splits_at_whitespace(pre: dict | None) -> bool:
    """Whether the pre-tokenizer splits at every space and no piece holds one: a whitespace splitter
    with only splitting steps before it (and after it, steps that work inside pieces: ByteLevel
    without its regex, a Metaspace that prepends nothing)."""
    if pre is None:
        return False
    def inside_pieces(step: dict) -> bool:  # changes text only inside the pieces it is given
        if step.get("type") == "ByteLevel":
            return not step.get("add_prefix_space") and not step.get("use_regex", True)
        return step.get("type") == "Metaspace" and step.get("prepend_scheme") == "never"

    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    splits = False
    for step in steps:
        if step.get("type") in _WHITESPACE_SPLITTERS:
            splits = True
        elif step.get("type") not in _SPLITTING_PRE_TOKENIZERS and not (splits and inside_pieces(step)):
            return False
    return splits


def cut_pattern(spec: dict) -> re.Pattern[str] | None:
    """Where a text may provably be cut so that its pieces encode to the ids of the whole text
    (`Tokenizer.cuts`), or None: GPT-2's cuts for its regex (also SmolLM's digits-first variant),
    cl100k's for Llama 3's and Qwen2's, any space for whitespace splitting; none for anything else
    (SentencePiece-style tokenizers prepend "▁" to every input and split nothing), for a normalizer
    that is not per character, or an added token that strips the spaces beside it or spans a cut."""
    pre = spec.get("pre_tokenizer")
    family = split_family(pre)
    if family in ("gpt2", "digits+gpt2"):
        cuts, spacing = GPT2_CUTS, False
    elif family in ("llama3", "qwen2"):
        cuts, spacing = CL100K_CUTS, False
    elif _splits_at_whitespace(pre):
        cuts, spacing = WHITESPACE_CUTS, True
    else:
        return None
    if not _per_char_normalizer(spec.get("normalizer"), spacing):
        return None
    for token in spec.get("added_tokens") or []:  # matched in the text before pre-tokenization
        content = token.get("content") or ""
        if token.get("lstrip") or token.get("rstrip"):
            return None
        if any(0 < m.start() - 1 < len(content) for m in cuts.finditer(f"a{content}a")):
            return None
    return cuts


def read_files(path: str | Path) -> dict[str, str]:
    """The tokenizer files of `path` (a directory holding tokenizer.json, or a tokenizer.json file,
    whose siblings are read too) as text; TokenizerError when there is none."""
    p = Path(path).expanduser()
    if p.is_dir():
        directory, main = p, p / TOKENIZER_JSON
        if not main.is_file():
            raise TokenizerError(f"{p} has no {TOKENIZER_JSON}; give a Hugging Face tokenizer directory or file "
                                 "(tokenizer.model-only SentencePiece directories: save them once with "
                                 "transformers' AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR))")
    elif p.is_file():
        directory, main = p.parent, p
    else:
        raise TokenizerError(f"hf tokenizer {path} does not exist; give a directory holding {TOKENIZER_JSON} "
                             "or the file itself (hf:PATH)")
    try:
        files = {TOKENIZER_JSON: main.read_text(encoding="utf-8")}
        if main.name == TOKENIZER_JSON:
            files.update({name: (directory / name).read_text(encoding="utf-8") for name in OPTIONAL_FILES
                          if (directory / name).is_file()})
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{p}: a tokenizer file is not UTF-8 text ({e})") from None
    return files


class HFTokenizer(Tokenizer):
    kind = "hf"
    needs_corpus = False

    def __init__(self, files: dict[str, str], origin: str = ""):
        where = origin or "the hf tokenizer"
        if TOKENIZER_JSON not in files:
            raise TokenizerError(f"{where}: no {TOKENIZER_JSON}")
        self.files = dict(files)
        try:
            self.spec = json.loads(files[TOKENIZER_JSON])
            self.hf = RustTokenizer.from_str(files[TOKENIZER_JSON])
        except Exception as e:  # json and tokenizers raise their own types for malformed files
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise TokenizerError(f"{where}: {TOKENIZER_JSON} failed to load ({first}); is it a Hugging Face "
                                 "tokenizer.json?") from None
        configs: dict[str, dict] = {}
        for name in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, GENERATION_CONFIG):
            try:
                value = json.loads(files[name]) if name in files else {}
            except json.JSONDecodeError as e:
                raise TokenizerError(f"{where}: {name} is not valid JSON ({e})") from None
            configs[name] = value if isinstance(value, dict) else {}
        self.config, generation = configs[TOKENIZER_CONFIG], configs[GENERATION_CONFIG]
        self.vocab = self.hf.get_vocab(with_added_tokens=True)
        self._size = max(self.vocab.values()) + 1 if self.vocab else 0

        def special(name: str) -> tuple[str | None, int | None]:
            text = _token_text(self.config.get(name)) or _token_text(configs[SPECIAL_TOKENS_MAP].get(name))
            return text, (self.vocab.get(text) if text is not None else None)

        self.bos_token, self._bos_token_id = special("bos_token")
        self.eos_token, eos = special("eos_token")
        self.pad_token, self.pad_id = special("pad_token")
        self.unk_token, self.unk_id = special("unk_token")
        if self.unk_id is None and isinstance(self.spec.get("model", {}).get("unk_token"), str):
            self.unk_token = self.spec["model"]["unk_token"]
            self.unk_id = self.vocab.get(self.unk_token)
        stops = generation.get("eos_token_id")  # an id or a list of ids (JSON's true is no id)
        stops = [integer(i, f"{where}: {GENERATION_CONFIG} eos_token_id", error=TokenizerError, note=" (a token id)")
                 for i in ([] if stops is None else stops if isinstance(stops, list) else [stops])]
        self.eot_id = eos if eos is not None else (stops[0] if stops else None)
        self.extra_stop_ids = [i for i in stops if i != self.eot_id and 0 <= i < self._size]
        add_bos = self.config.get("add_bos_token")
        self.add_bos = (bool(add_bos) if isinstance(add_bos, bool) else self._post_processor_adds_bos()) \
            and self._bos_token_id is not None
        self.bos_id = self._bos_token_id if self.add_bos else None
        self.cuts = cut_pattern(self.spec)
        eos_text = self.eos_token
        self.eot_text = eos_text if eos_text and self.eot_id is not None and self.encode(eos_text) == [self.eot_id] \
            else None
        # byte fallback or byte-level BPE: every text encodes without the unknown token
        byte_level = split_family(self.spec.get("pre_tokenizer")) is not None
        self.never_unknown = bool(self.spec.get("model", {}).get("byte_fallback")) or byte_level

    def _post_processor_adds_bos(self) -> bool:
        """Whether tokenizer.json's post-processor puts the BOS token before the text (Llama's `<s> $A`)."""
        post = self.spec.get("post_processor") or {}
        steps = post.get("processors", []) if post.get("type") == "Sequence" else [post]
        for step in steps:
            if step.get("type") == "TemplateProcessing":
                first = (step.get("single") or [{}])[0]
                return first.get("SpecialToken", {}).get("id") == self.bos_token
        return False

    @property
    def bos_token_id(self) -> int | None:
        """The original tokenizer's BOS token, also when it is not added to inputs."""
        return self._bos_token_id

    @property
    def source_files(self) -> dict[str, str]:
        return self.files

    @property
    def chat_template(self) -> str | None:
        """The original Jinja chat template (chat_template.jinja, else tokenizer_config.json's), if any."""
        if CHAT_TEMPLATE_FILE in self.files:
            return self.files[CHAT_TEMPLATE_FILE]
        template = self.config.get("chat_template")
        if isinstance(template, list):  # several named templates: the default one
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        return template if isinstance(template, str) else None

    @classmethod
    def train(cls, texts: Iterable[str], path: str = "", **options: Any) -> HFTokenizer:
        """Not trained: read from `path` (the spec's `hf:PATH`); `texts` are not read."""
        if options:
            raise TokenizerError(f"the hf tokenizer takes only a path (hf:PATH), not {', '.join(options)}")
        if not path:
            raise TokenizerError("the hf tokenizer needs a path: hf:DIR or hf:DIR/tokenizer.json")
        return cls(read_files(path), origin=str(path))

    @property
    def vocab_size(self) -> int:
        return self._size

    @property
    def stop_ids(self) -> list[int]:
        return [*super().stop_ids, *self.extra_stop_ids]

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def encode_offsets(self, text: str) -> tuple[list[int], list[int]]:
        encoding = self.hf.encode(text, add_special_tokens=False)
        ends, end = [], 0
        for _, stop in encoding.offsets:  # character offsets into `text`
            end = max(end, stop)
            ends.append(end)
        return encoding.ids, ends

    def decode(self, ids: Sequence[int]) -> str:
        n, pieces, run = self._size, [], []
        for i in ids:  # ids past the vocabulary (a padded embedding table) have no text: U+FFFD
            if 0 <= i < n:
                run.append(i)
                continue
            if run:
                pieces.append(self.hf.decode(run, skip_special_tokens=False))
                run = []
            pieces.append("\ufffd")
        if run or not pieces:
            pieces.append(self.hf.decode(run, skip_special_tokens=False))
        return "".join(pieces)

    def count_unknown(self, text: str) -> int:
        if self.unk_id is None or self.never_unknown:
            return 0
        return self.encode(text).count(self.unk_id)

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> HFTokenizer:
        files = state.get("files")
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise TokenizerError("the hf tokenizer state is corrupt (no files)")
        return cls(files)

    def save(self, directory: str | Path) -> Path:
        """tinylm's file, plus the original files (so `AutoTokenizer.from_pretrained` reads the directory)."""
        self.save_files(directory)
        return super().save(directory)

    def save_files(self, directory: str | Path, names: Sequence[str] = TOKENIZER_FILES) -> None:
        """Write the original files among `names` back, unchanged."""
        for name in names:
            if name in self.files:
                fileio.write_text(Path(directory) / name, self.files[name])


def source_digest(path: str | Path) -> str:
    """sha256 of the tokenizer files at `path` (a cache key that changes when they do)."""
    files = read_files(path)
    return fileio.sha256_bytes(json.dumps(files, sort_keys=True).encode())

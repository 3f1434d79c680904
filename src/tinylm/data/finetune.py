"""Fine-tuning data: instruction and chat records as training examples, batched with ignored padding.

    SOURCE ── detect_format ──► "text": a file, folder, dataset or data dir (prepared with the base's tokenizer,
       │                                trained on as windows: continued pre-training; see training/finetune.py)
       └──► "instruction" | "chat": read_records ──► (where, record) ──► record_messages ──► messages
                 .json array / .jsonl, or a record source        (Alpaca shape | OpenAI {"messages": [...]})
                 registered in RECORD_SOURCES (e.g. "hf:")
    messages ── Template.render ──► pieces ──► encode_pieces ──► ids + response mask
             (the text between end-of-text tokens is encoded whole, so BPE merges are those of the whole text,
              as in `tokenizer.apply_chat_template` of the export; the mask comes from character offsets)
    ──► Example(ids, labels: -1 on prompt tokens) ──► fit_example (cut from the prompt side | drop)
    ──► ExampleData(train, val) ──► ExampleBatches: seeded epochs of examples, each process its slice of the
        global batch, right-padded with ignored targets (causal attention: no token attends to padding
        or to another example) ──► the trainer;   score_examples: loss on response tokens (validation)

Tokenizers without an end-of-text id (char) cannot end a reply with a token: the assistant turn's
suffix (a line break in every template) is trained as part of the reply, and so is the template's
first `stop` string after the last reply (the next turn's marker, e.g. "User:"), which generation
stops at (`Run.chat` cuts it and the suffix off).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tinylm.config import RunConfig
from tinylm.console import console, warn
from tinylm.data.prepare import META_FILE, is_prepared, prepare_config, prepared_dir_for, read_meta
from tinylm.data.sources import BUILTIN, Source, _blocks, builtin_source, cache_key, json_lines
from tinylm.data.spec import read_source
from tinylm.errors import ConfigError, DataError
from tinylm.inputs import unsigned_seed
from tinylm.runtime import autocast
from tinylm.templates import Piece, Template, check_messages, get_template, instruction_messages
from tinylm.tokenizers import Tokenizer

IGNORE = -1  # the target index GPT.forward ignores
RECORD_SUFFIXES = (".json", ".jsonl")
Record = tuple[str, Any]  # (where: "file line N", the parsed record)
RecordOpener = Callable[[str], Iterator[Record]]
# Record sources other than local files, by prefix: an opener(spec) yields (where, record dict) pairs.
RECORD_SOURCES: dict[str, RecordOpener] = {}


def _hub_records(spec: str) -> Iterator[Record]:
    """The records of a Hugging Face Hub dataset's train split (`hf:OWNER/NAME[:CONFIG][@REV]`, data/hub.py)."""
    from tinylm.data.hub import iter_records

    for number, record in enumerate(iter_records(spec, "train"), 1):
        yield f"{spec} record {number}", record


RECORD_SOURCES["hf:"] = _hub_records


# --------------------------------------------------------------------------- reading records


def _json_array(path: Path, errors: str = "strict") -> Iterator[Record]:
    """The objects of a JSON array file, each with the line it starts on (a leading byte order mark
    dropped; invalid UTF-8 an error, or U+FFFD with errors="replace")."""
    text = "".join(_blocks(path, errors))
    decoder, pos = json.JSONDecoder(), 0

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    def line(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    pos = skip(pos)
    if pos == len(text):
        raise DataError(f"{path} is empty; give a JSON array of instruction records or a JSONL file")
    if text[pos] != "[":
        raise DataError(f"{path} line {line(pos)}: a .json file must hold an array of records; "
                        "write one record per line in a .jsonl file otherwise")
    pos = skip(pos + 1)
    while pos < len(text) and text[pos] != "]":
        try:
            record, end = decoder.raw_decode(text, pos)
        except ValueError as e:
            raise DataError(f"{path} line {line(pos)} is not valid JSON ({e}); fix the record") from None
        yield f"{path} line {line(pos)}", record
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
        elif pos < len(text) and text[pos] != "]":
            raise DataError(f"{path} line {line(pos)}: expected ',' or ']' between records")
    if pos >= len(text):
        raise DataError(f"{path}: the JSON array is not closed (no ']'); the file may be truncated")


def read_records(spec: str, errors: str = "strict") -> Iterator[Record]:
    """(where, record) for every record of a .json array or .jsonl file, or of a registered record
    source (`RECORD_SOURCES`, by prefix). Blank JSONL lines are skipped. `errors`: invalid UTF-8 in a
    file stops with an error (strict) or becomes U+FFFD (replace)."""
    for prefix, opener in RECORD_SOURCES.items():
        if spec.startswith(prefix):
            yield from opener(spec)
            return
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataError(f"{spec}: no such file")
    if path.suffix == ".json":
        yield from _json_array(path, errors)
    else:
        for number, record in json_lines(path, errors):
            yield f"{path} line {number}", record


def is_record_source(spec: str) -> bool:
    return any(spec.startswith(p) for p in RECORD_SOURCES) or Path(spec).suffix in RECORD_SUFFIXES


def record_kind(record: Any, text_field: str = "text") -> str | None:
    """"chat", "instruction" or "text" for a record's shape, None when it has none of them."""
    if isinstance(record, dict):
        if "messages" in record:
            return "chat"
        if "instruction" in record:
            return "instruction"
        if text_field in record:
            return "text"
    return None


def _bad_record(where: str) -> DataError:
    return DataError(f"{where}: a fine-tuning record needs \"messages\" (chat: [{{\"role\", \"content\"}}, ...]) "
                     "or \"instruction\" and \"output\" (Alpaca); add them or fix the file")


def detect_format(spec: str, text_field: str = "text", errors: str = "strict") -> str:
    """"text" (plain text, any `tinylm prepare` source or a prepared data dir), "instruction" or "chat",
    from the file: a .json/.jsonl file (or a record source) by its first record's keys."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / META_FILE).is_file():
        return "text"
    if not is_record_source(spec):
        if not path.exists() and spec not in BUILTIN and not re.fullmatch(r"[\w.-]+", spec):
            raise DataError(f"{spec}: no such file, folder or dataset")
        return "text"
    for where, record in read_records(spec, errors):
        kind = record_kind(record, text_field)
        if kind is None:
            raise _bad_record(where)
        return kind
    raise DataError(f"{spec} is empty (no records); give instruction or chat records, one per line")


def record_messages(record: Any, where: str, fmt: str) -> list[dict[str, str]]:
    """The messages of one record of format `fmt` ("instruction" or "chat"), checked: a reply to train
    on is required (an Alpaca "output", or an assistant message)."""
    if fmt == "instruction":
        if not isinstance(record, dict) or "instruction" not in record or "output" not in record:
            raise DataError(f"{where}: an instruction record needs \"instruction\" and \"output\" "
                            "(\"input\" is optional); add the missing field")
        return instruction_messages(record, where)
    if not isinstance(record, dict) or "messages" not in record:
        raise DataError(f"{where}: a chat record needs \"messages\": [{{\"role\", \"content\"}}, ...]; "
                        "add it or fix the file")
    messages = check_messages(record["messages"], f"{where}: messages")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation has no assistant message to train on; add the reply")
    return messages


def read_conversations(spec: str, fmt: str, errors: str = "strict") -> list[tuple[str, list[dict[str, str]]]]:
    """(where, messages) of every record of a file (or record source) in format `fmt`."""
    out = [(where, record_messages(record, where, fmt)) for where, record in read_records(spec, errors)]
    if not out:
        raise DataError(f"{spec} is empty (no records); give instruction or chat records")
    return out


# --------------------------------------------------------------------------- templates and encoding


def template_text(template: Template) -> str:
    """The template's own text (every role's markers, the default system message)."""
    roles = [{"role": r, "content": ""} for r in ("system", "user", "assistant")]
    return template.text(roles, eot_text="") + template.default_system


def choose_template(name: str, fmt: str, tokenizer: Tokenizer) -> Template:
    """The template called `name`, or for "" the default for the data: alpaca for instruction records,
    chat for chat records, and plain where the tokenizer's vocabulary lacks the markers' characters
    (a char model trained on text without '#' or '<')."""
    if name:
        return get_template(name)
    default = get_template("alpaca" if fmt == "instruction" else "chat")
    if tokenizer.count_unknown(template_text(default)):
        return get_template("plain")
    return default


def encode_pieces(tokenizer: Tokenizer, pieces: Sequence[Piece]) -> tuple[list[int], list[bool]]:
    """Token ids of rendered pieces and, per token, whether it belongs to a response.

    The rendered text is encoded whole, the end-of-text piece written as the token's text where
    `encode` reads that text as the token (`tokenizer.eot_text`: bpe, word, hf), else the text
    between end-of-text pieces is encoded as one string and the id put between (gpt2): either way the
    ids are those of the whole rendered text, what Hugging Face's `apply_chat_template` gives on the
    exported tokenizer. A token is a response token when it covers any character of a response
    piece. Without an end-of-text id, the piece after a reply's end (the assistant suffix) counts as
    response: it is what ends the reply."""
    eot, eot_text = tokenizer.eot_id, tokenizer.eot_text
    ids: list[int] = []
    mask: list[bool] = []
    text, spans, after_eot = "", [], False

    def flush() -> None:
        segment_ids, ends = tokenizer.encode_offsets(text)
        start = 0
        for token, end in zip(segment_ids, ends, strict=True):
            ids.append(token)
            mask.append(any(start < b and end > a for a, b in spans))
            start = end

    for piece in pieces:
        if piece.eot:
            if eot is not None and eot_text:
                if piece.response:
                    spans.append((len(text), len(text) + len(eot_text)))
                text += eot_text
            elif eot is not None:
                flush()
                text, spans = "", []
                ids.append(eot)
                mask.append(piece.response)
            else:
                after_eot = True
            continue
        if (piece.response or after_eot) and piece.text:
            spans.append((len(text), len(text) + len(piece.text)))
        after_eot = False
        text += piece.text
    flush()
    return ids, mask


def bos_ids(tokenizer: Tokenizer) -> list[int]:
    """[bos_id] for tokenizers that begin every input with it (`add_bos`: Llama's), as prompts do; else []."""
    return [tokenizer.bos_id] if tokenizer.add_bos and tokenizer.bos_id is not None else []


def encode_messages(tokenizer: Tokenizer, template: Template, messages: Sequence[dict[str, str]],
                    add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """`encode_pieces` of `template.render(messages, add_generation_prompt)`, after `bos_ids`."""
    ids, mask = encode_pieces(tokenizer, template.render(messages, add_generation_prompt))
    bos = bos_ids(tokenizer)
    return bos + ids, [False] * len(bos) + mask


@dataclass
class Example:
    """One training example: token ids and labels (the id where the loss applies, IGNORE elsewhere);
    the target of position t is labels[t + 1]."""

    ids: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class FitCounts:
    kept: int = 0
    truncated: int = 0  # cut from the prompt side to fit the window
    dropped: int = 0  # the last reply alone does not fit the window

    def report(self, what: str, window: int) -> str:
        parts = [f"{self.kept:,} {what} examples"]
        if self.truncated:
            parts.append(f"{self.truncated:,} longer than the window of {window} tokens cut from the prompt side")
        if self.dropped:
            parts.append(f"{self.dropped:,} dropped (the reply alone does not fit the window)")
        return "; ".join(parts)


def fit_example(ids: list[int], mask: list[bool], max_len: int,
                counts: FitCounts) -> tuple[list[int], list[bool]] | None:
    """`ids` (and `mask`) cut to at most `max_len` tokens from the left (the prompt side), or None when
    the last reply with one token of context before it is longer than `max_len`."""
    if len(ids) <= max_len:
        counts.kept += 1
        return ids, mask
    last = len(mask) - 1
    while last > 0 and not mask[last]:
        last -= 1
    while last > 0 and mask[last - 1]:
        last -= 1
    if len(ids) - last + 1 > max_len:
        counts.dropped += 1
        return None
    counts.kept += 1
    counts.truncated += 1
    return ids[-max_len:], mask[-max_len:]


def make_examples(conversations: Iterable[tuple[str, list[dict[str, str]]]], tokenizer: Tokenizer,
                  template: Template, max_len: int, train_on_prompt: bool = False) -> tuple[list[Example], FitCounts]:
    """Examples of at most `max_len` tokens (the training window + 1) from (where, messages) pairs; a
    conversation that encodes to fewer than 2 tokens, or with no reply token to train on, is a DataError
    naming where it is. Without an end-of-text id, a conversation ending in a reply also trains the
    template's first stop string after it (the next turn's marker), which generation stops at."""
    examples, counts = [], FitCounts()
    for where, messages in conversations:
        pieces = template.render(messages)
        if tokenizer.eot_id is None and template.stop and messages[-1]["role"] == "assistant":
            pieces.append(Piece(template.stop[0], response=True))  # what ends a reply without end-of-text
        ids, mask = encode_pieces(tokenizer, pieces)
        bos = bos_ids(tokenizer)  # kept when the prompt side is cut
        if len(bos) + len(ids) < 2:
            raise DataError(f"{where} encodes to {len(ids)} token(s); a record needs some text to train on")
        if not any(mask[1:]):
            raise DataError(f"{where}: the reply encodes to no tokens to train on (an empty reply and no "
                            "end-of-text token in this tokenizer); give the reply some text")
        fitted = fit_example(ids, mask, max_len - len(bos), counts)
        if fitted is None:
            continue
        ids, mask = bos + fitted[0], [False] * len(bos) + fitted[1]
        ids_array = np.asarray(ids, dtype=np.int64)
        labels = ids_array.copy() if train_on_prompt else np.where(mask, ids_array, IGNORE)
        examples.append(Example(ids_array, labels))
    return examples, counts


def count_unknown(tokenizer: Tokenizer, template: Template,
                  conversations: Iterable[tuple[str, list[dict[str, str]]]]) -> int:
    return sum(tokenizer.count_unknown(template.text(m, eot_text="")) for _, m in conversations)


# --------------------------------------------------------------------------- batches


def pad_batch(examples: Sequence[Example], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of shape (batch, longest - 1): inputs = ids[:-1], targets = labels[1:], right-padded
    with `pad_id` and IGNORE. Causal attention keeps every real token from seeing the padding after it."""
    width = max(len(e) for e in examples) - 1
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e) - 1
        x[row, :n] = torch.from_numpy(e.ids[:-1])
        y[row, :n] = torch.from_numpy(e.labels[1:])
    return x, y


class ExampleBatches:
    """Batches of whole examples in seeded epochs: epoch e visits the examples in the order of
    `torch.randperm(n)` drawn from `torch.Generator().manual_seed((seed * 1_000_003 + e) mod 2**63)`;
    each batch takes the next `batch_size * world_size` examples (running on into the next epoch), and
    process `rank` keeps its slice. The state is (epoch, index): exact resume. `take_tokens()` gives
    the tokens of the global batches drawn since the last call (the same in every process)."""

    def __init__(self, examples: Sequence[Example], batch_size: int, seed: int, shard: tuple[int, int] = (0, 1)):
        if not examples:
            raise DataError("no training examples are left to train on")
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.rank, self.world_size = shard
        self.global_batch = batch_size * self.world_size
        self._epoch, self._index = 0, 0
        self.order = self._order(0)
        self._tokens = 0

    def _order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (1 << 63))
        return torch.randperm(len(self.examples), generator=g)

    @property
    def epoch(self) -> float:
        return self._epoch + self._index / len(self.examples)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        picked: list[int] = []
        while len(picked) < self.global_batch:
            take = min(self.global_batch - len(picked), len(self.examples) - self._index)
            picked += self.order[self._index:self._index + take].tolist()
            self._index += take
            if self._index == len(self.examples):
                self._epoch, self._index = self._epoch + 1, 0
                self.order = self._order(self._epoch)
        self._tokens += sum(len(self.examples[i]) - 1 for i in picked)
        mine = picked[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return pad_batch([self.examples[i] for i in mine])

    def take_tokens(self) -> int:
        tokens, self._tokens = self._tokens, 0
        return tokens

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "index": self._index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        from tinylm.errors import CheckpointError

        if set(state) != {"epoch", "index"} or not 0 <= int(state["index"]) < len(self.examples):
            raise CheckpointError("the checkpoint's loader state does not fit these fine-tuning examples; "
                                  "resume with the run's own data")
        self._epoch, self._index = int(state["epoch"]), int(state["index"])
        self.order = self._order(self._epoch)


@torch.no_grad()
def score_examples(model: torch.nn.Module, examples: Sequence[Example], *, batch_size: int = 16,
                   device: torch.device | None = None, dtype: torch.dtype = torch.float32,
                   shard: tuple[int, int] = (0, 1)) -> tuple[float, int]:
    """Total negative log-likelihood (nats) of the examples' labelled targets (response tokens, or every
    token with train_on_prompt) and how many there were; examples sorted by length into padded batches.
    With `shard` = (rank, world_size), only every world_size-th example from `rank` (sum the shards)."""
    device = device or torch.device("cpu")
    rank, world_size = shard
    mine = sorted(examples[rank::world_size], key=len)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, len(mine), batch_size):
            x, y = pad_batch(mine[i:i + batch_size])
            x, y = x.to(device), y.to(device)
            with autocast(device, dtype):
                logits, _ = model(x)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE,
                                     reduction="sum").item()
            count += int((y != IGNORE).sum())
    finally:
        model.train(was_training)
    return total, count


@dataclass
class ExampleData:
    """Instruction or chat examples for the trainer: training batches and validation on response tokens."""

    name: str
    fmt: str  # instruction | chat
    template: str
    train: list[Example]
    val: list[Example]
    counts: dict[str, FitCounts] = field(default_factory=dict)

    def loader(self, seq_len: int, micro: int, seed: int, sampling: str, shard: tuple[int, int]) -> ExampleBatches:
        return ExampleBatches(self.train, micro, seed, shard)

    def steps_per_epoch(self, plan: Any) -> float:
        return len(self.train) / (plan.micro * plan.accum * plan.processes)

    def validation(self, model: torch.nn.Module, *, seq_len: int, batch_size: int, device: torch.device,
                   dtype: torch.dtype, max_tokens: int, shard: tuple[int, int]) -> tuple[float, int]:
        val = self.val
        if max_tokens:  # a quick periodic pass: the first examples up to max_tokens tokens
            total, n = 0, 0
            while n < len(val) and total < max_tokens:
                total += len(val[n])
                n += 1
            val = val[:max(n, 1)]
        return score_examples(model, val, batch_size=batch_size, device=device, dtype=dtype, shard=shard)

    def describe(self) -> str:
        tokens = sum(len(e) for e in self.train)
        return (f"{len(self.train):,} train / {len(self.val):,} val {self.fmt} examples ({tokens:,} train tokens), "
                f"template {self.template}, {self.name}")


def split_conversations(conversations: list[tuple[str, list[dict[str, str]]]], val_fraction: float,
                        seed: int) -> tuple[list, list]:
    """A seeded random `val_fraction` of the conversations (at least one) held out for validation."""
    if len(conversations) < 2:
        raise DataError(f"{len(conversations)} record(s) cannot be split into training and validation; "
                        "give at least 2 records, or a validation file (--val-data)")
    order = np.random.default_rng(unsigned_seed(seed)).permutation(len(conversations))
    n_val = min(max(1, round(len(conversations) * val_fraction)), len(conversations) - 1)
    val_ids = set(order[:n_val].tolist())
    train = [c for i, c in enumerate(conversations) if i not in val_ids]
    val = [c for i, c in enumerate(conversations) if i in val_ids]
    return train, val


def load_examples(spec: str, fmt: str, tokenizer: Tokenizer, template: Template, window: int, *,
                  val_spec: str = "", val_fraction: float = 0.1, seed: int = 1337, train_on_prompt: bool = False,
                  quiet: bool = False, errors: str = "strict") -> ExampleData:
    """Read, split, encode and fit the records of `spec` (and `val_spec`) into an ExampleData for
    windows of `window` tokens (examples of at most window + 1 tokens). Prints what was cut or dropped."""
    conversations = read_conversations(spec, fmt, errors)
    if val_spec:
        val_fmt = detect_format(val_spec, errors=errors)
        if val_fmt != fmt:
            raise DataError(f"{val_spec} holds {val_fmt} data but {spec} holds {fmt} records; give both in one format")
        train_conv, val_conv = conversations, read_conversations(val_spec, fmt, errors)
    else:
        train_conv, val_conv = split_conversations(conversations, val_fraction, seed)
    unknown = count_unknown(tokenizer, template, conversations)
    if unknown and not quiet:
        warn(f"{unknown:,} {tokenizer.unit}(s) of the rendered records (template {template.name}) are not in "
             "the base's vocabulary and map to <unk>" + ("; try --template plain" if template.name != "plain" else ""))
    counts = {}
    train, counts["train"] = make_examples(train_conv, tokenizer, template, window + 1, train_on_prompt)
    val, counts["val"] = make_examples(val_conv, tokenizer, template, window + 1, train_on_prompt)
    if not quiet:
        for split, c in counts.items():
            console.print(c.report(split, window))
    for split, items in (("training", train), ("validation", val)):
        if not items:
            raise DataError(f"no {split} example fits the window of {window} tokens (every reply is longer); "
                            "fine-tune with a longer train.seq_len (up to the base's model.context) or shorter replies")
    return ExampleData(spec, fmt, template.name, train, val, counts)


# --------------------------------------------------------------------------- a fine-tune's data


def text_data_dir(cfg: RunConfig, tokenizer: Tokenizer) -> Path:
    """A prepared data directory of `cfg.data` tokenized with the base's tokenizer: data.dir as given
    (refused if another tokenizer made it), or the source (+ finetune.val_data as its validation split)
    prepared once into the cache, keyed by the tokenizer's fingerprint."""
    data, base = cfg.data, cfg.finetune.base
    if data.dir:
        meta = read_meta(data.dir)
        if meta["tokenizer"]["fingerprint"] != tokenizer.fingerprint():
            raise DataError(f"{data.dir} was tokenized with another tokenizer ({meta['tokenizer']['spec']}) than the "
                            f"base run {base}; prepare the text with `tinylm prepare SOURCE --tokenizer-from {base} "
                            "--out DATA_DIR`, or give the text file itself")
        return Path(data.dir)
    src = read_source(data.source, data.errors, data.text_field, data.source_dir, data.hf_split)
    if not data.source_splits:
        src = src.training_split()
    if cfg.finetune.val_data:
        val = read_source(cfg.finetune.val_data, data.errors, data.text_field, data.source_dir)
        train_stream = src.streams["train" if src.has_splits else "all"]
        src = Source(f"{src.name}+{val.name}", {"train": train_stream, "val": val.streams["all"]},
                     cache_key(src.key, val.key), None, {**src.files, **val.files},
                     versions={**src.versions, **val.versions})
    out = prepared_dir_for(src, data, tokenizer)
    if not is_prepared(out, src):
        prepare_config(src, tokenizer, out, data)
        console.print(f"prepared {src.name} with the base's {tokenizer.kind} tokenizer into {out}")
    return out


def resolve_format(cfg: RunConfig) -> str:
    """finetune.format of `cfg`, detected from the data when "auto" (and recorded in `cfg`)."""
    ft = cfg.finetune
    source = cfg.data.dir or cfg.data.source
    fmt = ft.format if ft.format != "auto" else detect_format(source, cfg.data.text_field, cfg.data.errors)
    if cfg.data.dir and fmt != "text":
        raise ConfigError(f"{cfg.data.dir} is a prepared data directory: it can only be fine-tuned on as text")
    ft.format = fmt
    return fmt


def run_examples(cfg: RunConfig, tokenizer: Tokenizer, quiet: bool = False) -> ExampleData:
    """The instruction or chat examples a fine-tune's config names (finetune.template resolved into `cfg`)."""
    ft = cfg.finetune
    fmt = resolve_format(cfg)
    template = choose_template(ft.template, fmt, tokenizer)
    ft.template = template.name
    return load_examples(cfg.data.source, fmt, tokenizer, template, cfg.seq_len, val_spec=ft.val_data,
                         val_fraction=cfg.data.val_fraction, seed=cfg.data.split_seed,
                         train_on_prompt=ft.train_on_prompt, quiet=quiet, errors=cfg.data.errors)


# --------------------------------------------------------------------------- a demo instruction set


def shakespeare_instructions(limit: int = 0) -> list[dict[str, str]]:
    """Alpaca records made from the bundled Shakespeare corpus: "Who says: <a speech's first line>" ->
    the speaker's name, for every speech whose first line has 20-70 characters and whose speaker's name
    is a single short word (in corpus order; the first `limit` when > 0). Used by the tests, the
    benchmark and the worked example in docs/finetuning.md."""
    speech = re.compile(r"^([A-Z][A-Z]{1,14})\.\n([^\n]{20,70})\n", re.M)
    records = []
    for doc in builtin_source("shakespeare").documents():
        for name, line in speech.findall(doc):
            records.append({"instruction": f"Who says: {line.strip()}", "output": name.title()})
            if limit and len(records) >= limit:
                return records
    return records

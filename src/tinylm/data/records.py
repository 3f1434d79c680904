"""Fine-tuning records: instruction and chat records read from files or record sources, as messages.

    SOURCE ── detect_format ──► "text": a file, folder, dataset or data dir (trained on as windows)
       ├──► "preference" ({"prompt", "chosen", "rejected"}): pairs, read by data/preferences.py
       └──► "instruction" | "chat": read_records ──► (where, record) ──► record_messages ──► messages
                 .json array / .jsonl, or a record source        (Alpaca shape | OpenAI {"messages": [...]})
                 registered in RECORD_SOURCES (e.g. "hf:")
    read_conversations: (where, messages) of every record; split_conversations: a seeded validation share;
    shakespeare_instructions: a demo instruction set made from the bundled corpus.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from tinylm.chat.templates import check_messages, instruction_messages
from tinylm.data.prepare import META_FILE
from tinylm.data.sources import BUILTIN, builtin_source, json_lines, read_blocks
from tinylm.errors import DataError
from tinylm.config.fields import unsigned_seed

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


def _json_array(path: Path, errors: str = "strict") -> Iterator[Record]:
    """The objects of a JSON array file, each with the line it starts on (a leading byte order mark
    dropped; invalid UTF-8 an error, or U+FFFD with errors="replace")."""
    text = "".join(read_blocks(path, errors))
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
    """"chat", "instruction", "preference" (chosen and rejected responses: data/preferences.py) or "text" for a
    record's shape, None when it has none of them."""
    if isinstance(record, dict):
        if "chosen" in record and "rejected" in record:
            return "preference"
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

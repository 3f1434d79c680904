"""Preference pairs for DPO: (prompt, chosen, rejected) records as two examples that share the prompt.

    record {"prompt": str | [messages], "chosen": str | [assistant messages], "rejected": ...}
       (read_records: .json array / .jsonl, or a record source such as "hf:")
    ── pair_messages (checked: keys, types, empty or identical responses; one line naming the record) ──►
       prompt messages + chosen messages, prompt messages + rejected messages
    ── Template.render ──► chat.encode_pieces ──► ids + a mask of the response's tokens only (the prompt's
       own assistant turns, if any, are not response) ──► fit_example (cut from the prompt side | drop)
    ──► Pair(chosen: Example, rejected: Example) ──► Pairs(train, val) ──► PairBatches: seeded epochs of
       pairs (exact resume), each batch (2B, T): the B chosen rows, then the B rejected rows, right-padded
       with ignored targets

The two shapes are TRL's (DPOTrainer's "standard" and "conversational" preference formats): a string
prompt is one user message and a string response one assistant message. Tokenizers without an end-of-text
id (char) train the template's first stop string after each response too, as other fine-tunes do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from tinylm.chat.encode import bos_ids, encode_pieces
from tinylm.chat.templates import Piece, Template, check_messages
from tinylm.console import console, warn
from tinylm.data.examples import IGNORE, Example, ExampleBatches, FitCounts, count_unknown, fit_example, pad_batch
from tinylm.data.records import detect_format, read_records, split_conversations
from tinylm.errors import DataError
from tinylm.tokenizers import Tokenizer

KEYS = ("prompt", "chosen", "rejected")
Messages = list[dict[str, str]]


@dataclass
class Pair:
    """One preference pair: the prompt + chosen response and the prompt + rejected response as examples
    (labels: the response's token ids, IGNORE elsewhere); `where` names the record."""

    chosen: Example
    rejected: Example
    where: str = ""

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, (bool, int, float, type(None))) else None
    return text if text is not None else type(value).__name__


def _response(value: Any, key: str, where: str) -> Messages:
    if isinstance(value, str):
        messages = [{"role": "assistant", "content": value}]
    elif isinstance(value, list) and value:
        messages = check_messages(value, f"{where}: {key}")
        bad = next((i for i, m in enumerate(messages) if m["role"] != "assistant"), None)
        if bad is not None:
            raise DataError(f"{where}: {key}[{bad}] has role {messages[bad]['role']!r}; the {key} response is "
                            "assistant messages only (the conversation before it belongs in \"prompt\")")
    else:
        raise DataError(f"{where}: \"{key}\" must be a string or a non-empty list of assistant messages "
                        f"[{{\"role\": \"assistant\", \"content\": ...}}], got {_shown(value)}")
    if not "".join(m["content"] for m in messages).strip():
        raise DataError(f"{where}: the \"{key}\" response is empty; give it some text, or drop the record")
    return messages


def pair_messages(record: Any, where: str) -> tuple[Messages, Messages, Messages]:
    """(prompt, chosen, rejected) messages of one preference record, checked: a dict with the three keys;
    prompt a string (one user message) or a non-empty list of messages; chosen and rejected each a
    non-blank string or a non-empty list of assistant messages, and not the same. One-line DataErrors
    naming `where` (the file and line)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: a preference record is a JSON object {{\"prompt\", \"chosen\", \"rejected\"}}, "
                        f"got {_shown(record)}")
    missing = [k for k in KEYS if k not in record]
    if missing:
        hint = (" (TRL's implicit-prompt records, whole conversations without \"prompt\", are not read: move the "
                "shared conversation before the responses into \"prompt\")" if "prompt" in missing else "")
        raise DataError(f"{where}: a preference record needs \"prompt\", \"chosen\" and \"rejected\"; "
                        f"\"{missing[0]}\" is missing{hint}")
    prompt = record["prompt"]
    if isinstance(prompt, str):
        prompt_messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and prompt:
        prompt_messages = check_messages(prompt, f"{where}: prompt")
    else:
        raise DataError(f"{where}: \"prompt\" must be a string or a non-empty list of {{\"role\", \"content\"}} "
                        f"messages, got {_shown(prompt)}")
    chosen, rejected = (_response(record[k], k, where) for k in ("chosen", "rejected"))
    if chosen == rejected:
        raise DataError(f"{where}: \"chosen\" and \"rejected\" are the same response, so the pair prefers "
                        "nothing; give two different responses, or drop the record")
    return prompt_messages, chosen, rejected


def read_pairs(spec: str, errors: str = "strict") -> list[tuple[str, Messages, Messages, Messages]]:
    """(where, prompt, chosen, rejected) of every record of a .json array / .jsonl file or record source."""
    out = [(where, *pair_messages(record, where)) for where, record in read_records(spec, errors)]
    if not out:
        raise DataError(f"{spec} is empty (no records); give preference records {{\"prompt\", \"chosen\", "
                        "\"rejected\"}, one per line")
    return out


def _runs(mask: Sequence[bool]) -> list[tuple[int, int]]:
    """(start, stop) of each run of True in `mask`."""
    runs, start = [], None
    for i, m in enumerate([*mask, False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    return runs


def encode_response(tokenizer: Tokenizer, template: Template, prompt: Messages,
                    response: Messages) -> tuple[list[int], list[bool]]:
    """Ids of prompt + response rendered with `template` (encoded whole, as fine-tuning and
    `apply_chat_template` encode), and per token whether it belongs to the response: the response
    runs of the mask after those the prompt alone has (its own assistant turns), so BPE merges at the
    boundary cannot move it. Without an end-of-text id, the template's first stop string after the
    response is trained too (what ends a reply there)."""
    pieces = template.render([*prompt, *response])
    if tokenizer.eot_id is None and template.stop:
        pieces.append(Piece(template.stop[0], response=True))
    ids, mask = encode_pieces(tokenizer, pieces)
    skip = len(_runs(encode_pieces(tokenizer, template.render(prompt))[1]))
    keep = np.zeros(len(mask), dtype=bool)
    for start, stop in _runs(mask)[skip:]:
        keep[start:stop] = True
    return ids, keep.tolist()


def make_pairs(records: Sequence[tuple[str, Messages, Messages, Messages]], tokenizer: Tokenizer,
               template: Template, max_len: int) -> tuple[list[Pair], FitCounts]:
    """Pairs of examples of at most `max_len` tokens each (the training window + 1). A pair longer than that
    loses tokens from the prompt side (both sequences, each as far as it must); a pair where either
    response alone (with one token before it) does not fit is dropped; both are counted. A response that
    encodes to no tokens, or two responses that encode to the same ids, are a DataError naming the record."""
    pairs, counts = [], FitCounts()
    bos = bos_ids(tokenizer)
    for where, prompt, chosen, rejected in records:
        sides = []
        for key, response in (("chosen", chosen), ("rejected", rejected)):
            ids, mask = encode_response(tokenizer, template, prompt, response)
            if not any(mask[1:]) and not (bos and any(mask)):
                raise DataError(f"{where}: the \"{key}\" response encodes to no tokens to train on; give it some text")
            sides.append((ids, mask))
        if sides[0][0] == sides[1][0]:
            raise DataError(f"{where}: \"chosen\" and \"rejected\" encode to the same tokens with this tokenizer "
                            f"({tokenizer.kind}; characters outside its vocabulary become <unk>), so the pair "
                            "prefers nothing; give responses that differ in text the tokenizer knows, or drop it")
        side_counts = FitCounts()
        fitted = [fit_example(ids, mask, max_len - len(bos), side_counts) for ids, mask in sides]
        if any(f is None for f in fitted):
            counts.dropped += 1
            continue
        counts.kept += 1
        counts.truncated += bool(side_counts.truncated)
        examples = []
        for ids, mask in fitted:
            ids_array = np.asarray(bos + ids, dtype=np.int64)
            examples.append(Example(ids_array, np.where([False] * len(bos) + mask, ids_array, IGNORE)))
        pairs.append(Pair(examples[0], examples[1], where))
    return pairs, counts


def pad_pairs(pairs: Sequence[Pair], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of shape (2 x pairs, longest - 1): the chosen rows first, then the rejected rows in
    the same order (`pad_batch` of both), so row i and row i + len(pairs) are one pair."""
    return pad_batch([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)


class PairBatches(ExampleBatches):
    """`ExampleBatches` of pairs: the same seeded epochs, shards and exact resume; a batch is `pad_pairs` of
    `batch_size` pairs (2 x batch_size rows), and a pair counts the tokens of both its sequences."""

    collate = staticmethod(pad_pairs)

    @staticmethod
    def tokens_of(pair: Pair) -> int:  # type: ignore[override]
        return len(pair.chosen) + len(pair.rejected) - 2


@dataclass
class Pairs:
    """The preference pairs of a DPO fine-tune: training and validation, and what fitting cut."""

    name: str
    template: str
    train: list[Pair]
    val: list[Pair]
    counts: dict[str, FitCounts] = field(default_factory=dict)
    fmt: str = "preference"


def load_pairs(spec: str, tokenizer: Tokenizer, template: Template, window: int, *, val_spec: str = "",
               val_fraction: float = 0.1, seed: int = 1337, quiet: bool = False, errors: str = "strict") -> Pairs:
    """Read, check, split, encode and fit the pairs of `spec` (and `val_spec`, also preference records) for
    windows of `window` tokens. Prints what was cut or dropped; warns of text outside the vocabulary."""
    records = read_pairs(spec, errors)
    if val_spec:
        val_fmt = detect_format(val_spec, errors=errors)
        if val_fmt != "preference":
            raise DataError(f"{val_spec} holds {val_fmt} data but {spec} holds preference pairs; give both as pairs")
        train_rec, val_rec = records, read_pairs(val_spec, errors)
    else:
        train_rec, val_rec = split_conversations(records, val_fraction, seed)
    if not quiet:
        conversations = [(w, [*p, *r]) for w, p, c, rj in records for r in (c, rj)]
        unknown = count_unknown(tokenizer, template, conversations)
        if unknown:
            warn(f"{unknown:,} {tokenizer.unit}(s) of the rendered pairs (template {template.name}) are not in the "
                 "base's vocabulary and map to <unk>" + ("; try --template plain" if template.name != "plain" else ""))
    counts = {}
    train, counts["train"] = make_pairs(train_rec, tokenizer, template, window + 1)
    val, counts["val"] = make_pairs(val_rec, tokenizer, template, window + 1)
    if not quiet:
        for split, c in counts.items():
            console.print(c.report(f"{split} preference", window).replace(" examples", " pairs", 1))
    for split, items in (("training", train), ("validation", val)):
        if not items:
            raise DataError(f"no {split} pair fits the window of {window} tokens (every response is longer); "
                            "fine-tune with a longer train.seq_len (up to the base's model.context) or shorter responses")
    return Pairs(spec, template.name, train, val, counts)

"""Fine-tuning examples: messages as token ids with a response mask, fitted to the window and batched.

    (where, messages) ── Template.render ──► pieces ──► chat.encode_pieces ──► ids + response mask
    ──► Example(ids, labels: IGNORE on prompt tokens) ──► fit_example (cut from the prompt side | drop)
    ──► Examples(train, val) ──► ExampleBatches: seeded epochs of examples, each process its slice of the
        global batch, right-padded with ignored targets (causal attention: no token attends to padding
        or to another example)

Tokenizers without an end-of-text id (char) cannot end a reply with a token: the assistant turn's
suffix (a line break in every template) is trained as part of the reply, and so is the template's
first `stop` string after the last reply (the next turn's marker, e.g. "User:"), which generation
stops at (`Run.chat` cuts it and the suffix off).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from tinylm.chat.encode import bos_ids, encode_pieces
from tinylm.chat.templates import Piece, Template
from tinylm.console import console, warn
from tinylm.data.records import detect_format, read_conversations, split_conversations
from tinylm.errors import CheckpointError, DataError
from tinylm.tokenizers import Tokenizer

IGNORE = -1  # the target index GPT.forward ignores


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
        self._tokens += sum(self.tokens_of(self.examples[i]) for i in picked)
        mine = picked[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return self.collate([self.examples[i] for i in mine])

    # what a batch of items is, and the tokens an item counts (a subclass batches other items: preference pairs)
    collate = staticmethod(pad_batch)

    @staticmethod
    def tokens_of(example: Example) -> int:
        return len(example) - 1

    def take_tokens(self) -> int:
        tokens, self._tokens = self._tokens, 0
        return tokens

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "index": self._index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if set(state) != {"epoch", "index"} or not 0 <= int(state["index"]) < len(self.examples):
            raise CheckpointError("the checkpoint's loader state does not fit these fine-tuning examples; "
                                  "resume with the run's own data")
        self._epoch, self._index = int(state["epoch"]), int(state["index"])
        self.order = self._order(self._epoch)


@dataclass
class Examples:
    """The instruction or chat examples of a fine-tune: training and validation, and what fitting cut."""

    name: str
    fmt: str  # instruction | chat
    template: str
    train: list[Example]
    val: list[Example]
    counts: dict[str, FitCounts] = field(default_factory=dict)


def load_examples(spec: str, fmt: str, tokenizer: Tokenizer, template: Template, window: int, *,
                  val_spec: str = "", val_fraction: float = 0.1, seed: int = 1337, train_on_prompt: bool = False,
                  quiet: bool = False, errors: str = "strict") -> Examples:
    """Read, split, encode and fit the records of `spec` (and `val_spec`) into `Examples` for
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
    return Examples(spec, fmt, template.name, train, val, counts)

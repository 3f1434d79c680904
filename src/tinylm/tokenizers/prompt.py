"""User text as prompt ids: the one rule for a text that encodes to no tokens.

    user text ──► encode_text(tokenizer, text, item=..., empty="start" | "error")
                      │ ids ──► as encoded (a prompt: after BOS where the tokenizer adds it)
                      │ none ─► "start": the tokenizer's start ids (the empty prompt)
                      │         "error": EmptyInputError naming the item (file and line, prompt number)

Every place that takes text from a user (prompts of `tinylm sample`, `Run.generate/stream/complete`
and batches of them, evaluation contexts and choices, cloze items, the server's prompts) encodes it with
`encode_text`, so a text that encodes to nothing (whitespace for the word tokenizer) behaves the same
everywhere: as the empty prompt where that has a meaning, else as a one-line error naming the item.
"""

from __future__ import annotations

from typing import Literal

from tinylm.errors import EmptyInputError
from tinylm.tokenizers.base import Tokenizer


def encode_text(tokenizer: Tokenizer, text: str, *, item: str = "the prompt",
                empty: Literal["start", "error"] = "start") -> list[int]:
    """`text`'s ids under `tokenizer`. With `empty="start"` the text is a prompt (or a context):
    `tokenizer.prompt_ids(text)`, which prepends BOS where the tokenizer does and gives a text that
    encodes to no ids (the empty string; whitespace for the word tokenizer) the tokenizer's start
    ids, the empty prompt. With `empty="error"` the text is a continuation (a choice, a response):
    its plain ids, and `EmptyInputError` naming `item` (e.g. "data.jsonl line 3: choice 2") when
    there are none. Raises `EmptyInputError` too when `text` is not a string."""
    if not isinstance(text, str):
        raise EmptyInputError(f"{item} must be text, got {type(text).__name__}")
    if empty == "start":
        return tokenizer.prompt_ids(text)
    ids = tokenizer.encode(text) if text else []
    if ids:
        return ids
    shown = repr(text) if len(text) <= 20 else repr(text[:20]) + "..."
    raise EmptyInputError(f"{item} encodes to no tokens ({shown} has no {tokenizer.unit} the tokenizer "
                          "keeps); give it some text")

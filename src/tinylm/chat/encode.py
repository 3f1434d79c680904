"""Chat messages as the ids a model is trained on and prompted with, and which template a run uses.

    messages ── Template.render (templates.py) ──► pieces ──► encode_pieces ──► ids + response mask
             (the text between end-of-text tokens encoded whole, so BPE merges are those of the whole text,
              as `tokenizer.apply_chat_template` of the export gives; the mask from character offsets)
    encode_messages: the same after the tokenizer's BOS (Llama's), what fine-tuning trains on;
    conversation_ids: with the assistant prefix, cut from the left to leave room for the reply: what
    `Run.chat` and `tinylm serve` generate after.

Which template: `choose_template` for a fine-tune's data (alpaca for instructions, chat for chats, plain
where the vocabulary lacks the markers' characters), `run_template` for a run (the one it was fine-tuned
with: finetune.template in its config), `warn_unknown_markers` when another one would turn into <unk>.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from tinylm.chat.templates import ALPACA_PREAMBLE, Piece, Template, get_template, unknown_marker_count
from tinylm.config import RunConfig
from tinylm.console import warn
from tinylm.errors import ConfigError
from tinylm.tokenizers import Tokenizer


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


def run_template(cfg: RunConfig) -> Template | None:
    """The prompt template a run was fine-tuned with (finetune.template in its config), or None. For a
    run fine-tuned on instruction records, a conversation without a system message gets the Alpaca
    preamble, as every instruction record had in training."""
    ft = cfg.finetune
    if not ft.template:
        return None
    template = get_template(ft.template)
    if ft.format == "instruction" and not template.default_system:
        template = dataclasses.replace(template, default_system=ALPACA_PREAMBLE)
    return template


def warn_unknown_markers(template: Template, tokenizer: Tokenizer) -> None:
    """A warning when `template`'s markers are partly outside `tokenizer`'s vocabulary (they become <unk>:
    the model cannot tell the roles apart), for a template other than the one a run was fine-tuned with."""
    if unknown_marker_count(template, tokenizer):
        fits = [name for name in ("plain", "alpaca", "chat")
                if name != template.name and not unknown_marker_count(get_template(name), tokenizer)]
        fix = (f"use the {' or '.join(fits)} template" if fits else
               "no shipped template fits this vocabulary: fine-tune on text that has the markers' characters")
        warn(f"the {template.name!r} template's markers use {tokenizer.unit}s this model's {tokenizer.kind} "
             f"tokenizer does not have (they become <unk>); {fix}")


def conversation_ids(tokenizer: Tokenizer, template: Template, messages: Sequence[dict[str, str]], context: int,
                     max_new_tokens: int, truncate: bool = True) -> list[int]:
    """The ids a reply to `messages` is generated after: the conversation rendered with `template` and the
    assistant prefix, encoded as in fine-tuning (`encode_messages`: the whole text at once, BOS first where
    the tokenizer adds it); messages that encode to nothing are the empty prompt (the start ids). As in
    fine-tuning, a long conversation loses tokens from the left, leaving room for the reply in the window
    of `context` tokens (a reply generated past the context would see a slid, shorter window): a
    ConfigError if not `truncate`."""
    ids, _ = encode_messages(tokenizer, template, messages, add_generation_prompt=True)
    ids = ids or tokenizer.start_ids()
    keep = context - min(max_new_tokens, context // 4)
    if len(ids) > keep:
        if not truncate:
            raise ConfigError(f"the conversation has {len(ids)} tokens; with room for the reply only {keep} fit "
                              "the context: shorten it, or allow truncation to its last tokens (truncate=True)")
        warn(f"the conversation has {len(ids)} tokens; its last {keep} are used (room for the reply)")
        ids = ids[-keep:]
    return ids

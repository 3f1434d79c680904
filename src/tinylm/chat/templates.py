"""Prompt templates: how instruction and chat records become the text a model is trained on and prompted with.

    instruction record {"instruction", "input"?, "output"} ──► instruction_messages() ──┐
    chat record {"messages": [{"role", "content"}, ...]} ──► check_messages() ──────────┤
                                                                                        ▼
                            Template.render(messages, add_generation_prompt) -> [Piece(text, response, eot)]
                                   │                                    │
                 fine-tuning: encode the pieces, loss on        Template.text(..., eot_text): one string, the
                 response pieces only (finetune data)           same as Template.jinja() rendered by Hugging Face
                                   │                             `apply_chat_template` (exported chat_template)
                 chat / serving: render with add_generation_prompt=True, generate, stop at end-of-text

A template is a format per role: a system message, a user message and an assistant turn are each
`prefix + content + suffix`; an assistant response is followed by the tokenizer's end-of-text token (a
`Piece` with `eot=True`), which is what ends a reply at generation time. Templates are plain data, so
exporters can translate them (a Jinja `chat_template` for transformers, a Go template for Ollama).

Shipped templates (`TEMPLATES`):
  alpaca  Stanford Alpaca's instruction format (Taori et al. 2023, `### Instruction:` / `### Response:`)
  chat    role markers in the style of Zephyr (`<|system|>`, `<|user|>`, `<|assistant|>`)
  plain   `User:` / `Assistant:` lines, for tokenizers whose vocabulary lacks `<`, `|` or `#` (char models)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from tinylm.errors import ConfigError, DataError

ROLES = ("system", "user", "assistant")

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
ALPACA_PREAMBLE_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                         "further context. Write a response that appropriately completes the request.")


@dataclass(frozen=True)
class Piece:
    """A piece of rendered text. `response`: part of an assistant response (trained on by default);
    `eot`: stands for the tokenizer's end-of-text token (then `text` is empty)."""

    text: str
    response: bool = False
    eot: bool = False


@dataclass(frozen=True)
class RoleFormat:
    """How one message of a role is written: prefix + content + suffix."""

    prefix: str
    suffix: str


@dataclass(frozen=True)
class Template:
    """A prompt format. `default_system` is written as a system message when a conversation has none
    ("" = nothing). An assistant message is `assistant.prefix + content`, then the end-of-text token,
    then `assistant.suffix`; with add_generation_prompt the rendering ends with `assistant.prefix`."""

    name: str
    description: str
    system: RoleFormat
    user: RoleFormat
    assistant: RoleFormat
    default_system: str = ""

    def role(self, name: str) -> RoleFormat:
        return {"system": self.system, "user": self.user, "assistant": self.assistant}[name]

    @property
    def stop(self) -> list[str]:
        """Text that begins the next turn: a reply is cut there too (useful when a model has not
        learned to emit end-of-text, or a tokenizer has none)."""
        return [s for s in (self.user.prefix.strip(), self.system.prefix.strip()) if s]

    def reply_stops(self, has_eot: bool) -> list[str]:
        """Stop strings for a reply: `stop`, and for a tokenizer without an end-of-text token (char) also
        each preceded by the assistant suffix, so the reply's end (suffix + next turn) is cut whole."""
        if has_eot or not self.assistant.suffix:
            return self.stop
        return [self.assistant.suffix + s for s in self.stop] + self.stop

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False) -> list[Piece]:
        """The pieces of `messages` (checked with `check_messages`). With `add_generation_prompt` the
        rendering ends with the assistant prefix, ready for the model to write the reply."""
        messages = check_messages(messages)
        pieces: list[Piece] = []
        if self.default_system and messages[0]["role"] != "system":
            pieces.append(Piece(self.system.prefix + self.default_system + self.system.suffix))
        for m in messages:
            fmt = self.role(m["role"])
            if m["role"] == "assistant":
                pieces += [Piece(fmt.prefix), Piece(m["content"], response=True), Piece("", True, eot=True)]
                if fmt.suffix:
                    pieces.append(Piece(fmt.suffix))
            else:
                pieces.append(Piece(fmt.prefix + m["content"] + fmt.suffix))
        if add_generation_prompt:
            pieces.append(Piece(self.assistant.prefix))
        return pieces

    def text(self, messages: Sequence[dict[str, Any]], eot_text: str, add_generation_prompt: bool = False) -> str:
        """The rendering as one string, the end-of-text token written as `eot_text` (its text form, e.g.
        "<|endoftext|>"): what `jinja()` renders in Hugging Face `apply_chat_template`."""
        return "".join(eot_text if p.eot else p.text for p in self.render(messages, add_generation_prompt))

    def jinja(self, bos: bool = False) -> str:
        """This template as a Hugging Face `chat_template` (Jinja; the end-of-text token is `eos_token`;
        with `bos`, the rendering opens with `bos_token`, for tokenizers that begin every input with it).
        Literal text is written as quoted expressions, so the tokenizer's trim/lstrip settings cannot
        change it."""
        def lit(s: str) -> str:
            return "{{ " + repr(s) + " }}" if s else ""

        def part(role: str) -> str:
            fmt = self.role(role)
            if role == "assistant":
                return lit(fmt.prefix) + "{{ message['content'] }}{{ eos_token }}" + lit(fmt.suffix)
            return lit(fmt.prefix) + "{{ message['content'] }}" + lit(fmt.suffix)

        out = "{{ bos_token }}" if bos else ""
        if self.default_system:
            out += ("{% if messages and messages[0]['role'] != 'system' %}"
                    + lit(self.system.prefix + self.default_system + self.system.suffix) + "{% endif %}")
        out += "{% for message in messages %}"
        for i, role in enumerate(ROLES):
            out += ("{% if " if i == 0 else "{% elif ") + f"message['role'] == '{role}' %}}" + part(role)
        out += ("{% else %}{{ raise_exception('unknown role ' + message['role'] + '; use system, user or "
                "assistant') }}{% endif %}{% endfor %}")
        out += "{% if add_generation_prompt %}" + lit(self.assistant.prefix) + "{% endif %}"
        return out


TEMPLATES: dict[str, Template] = {t.name: t for t in (
    Template("alpaca", "Stanford Alpaca: '### Instruction:' / '### Input:' / '### Response:' sections",
             system=RoleFormat("", "\n\n"), user=RoleFormat("### Instruction:\n", "\n\n"),
             assistant=RoleFormat("### Response:\n", "\n\n"), default_system=ALPACA_PREAMBLE),
    Template("chat", "role markers in the style of Zephyr: <|system|>, <|user|>, <|assistant|> lines",
             system=RoleFormat("<|system|>\n", "\n"), user=RoleFormat("<|user|>\n", "\n"),
             assistant=RoleFormat("<|assistant|>\n", "\n")),
    Template("plain", "'System:', 'User:' and 'Assistant:' lines, for vocabularies without < | # (char models)",
             system=RoleFormat("System: ", "\n"), user=RoleFormat("User: ", "\n"),
             assistant=RoleFormat("Assistant: ", "\n")),
)}


def unknown_marker_count(template: Template, tokenizer: Any) -> int:
    """How many pieces of `template`'s own text (role markers, separators, for every role) fall
    outside `tokenizer`'s vocabulary (`Tokenizer.count_unknown`): > 0 means its markers partly become
    <unk>, e.g. the `chat` template's `<|...|>` for a char vocabulary without `<` and `|`."""
    messages = [{"role": r, "content": ""} for r in ("system", "user", "assistant")]
    return tokenizer.count_unknown(template.text(messages, eot_text="", add_generation_prompt=False))


def get_template(name: str) -> Template:
    """The template called `name`; an unknown name is a one-line ConfigError listing the known ones."""
    if name not in TEMPLATES:
        raise ConfigError(f"unknown template {name!r}; choose one of {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def check_messages(messages: Any, where: str = "messages") -> list[dict[str, str]]:
    """`messages` as a list of {"role", "content"} dicts, or a one-line DataError naming `where` and
    the message at fault: a non-empty list; roles system/user/assistant; content a string; a system
    message only first."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise DataError(f"{where}: expected a non-empty list of {{\"role\", \"content\"}} messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}[{i}]: a message needs \"role\" and \"content\"")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise DataError(f"{where}[{i}]: unknown role {role!r}; use system, user or assistant")
        if not isinstance(content, str):
            raise DataError(f"{where}[{i}]: content must be a string, got {type(content).__name__}")
        if role == "system" and i != 0:
            raise DataError(f"{where}[{i}]: a system message may only come first")
        out.append({"role": role, "content": content})
    return out


def instruction_messages(record: Any, where: str = "record") -> list[dict[str, str]]:
    """An Alpaca-shaped record {"instruction", "input" (optional), "output" (optional for prompting)} as
    messages: the Alpaca preamble (the with-input variant when input is given) as the system message,
    the instruction (and input, under '### Input:') as the user message, the output as the reply."""
    if not isinstance(record, dict) or not isinstance(record.get("instruction"), str):
        raise DataError(f"{where}: an instruction record needs an \"instruction\" string")
    extra = record.get("input")
    extra = "" if extra is None else extra  # null: no input (false or 0 is no text: refused)
    if not isinstance(extra, str):
        raise DataError(f"{where}: \"input\" must be a string, got {type(extra).__name__}")
    user = record["instruction"] + (f"\n\n### Input:\n{extra}" if extra else "")
    messages = [{"role": "system", "content": ALPACA_PREAMBLE_INPUT if extra else ALPACA_PREAMBLE},
                {"role": "user", "content": user}]
    if "output" in record:
        if not isinstance(record["output"], str):
            raise DataError(f"{where}: \"output\" must be a string")
        messages.append({"role": "assistant", "content": record["output"]})
    return messages

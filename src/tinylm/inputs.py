"""The rules for user input, in one place: text that encodes to no tokens, and numbers.

    user text ──► encode_text(tokenizer, text, item=..., empty="start" | "error")
                      │ ids ──► as encoded
                      │ none ─► "start": the tokenizer's start ids (the empty prompt)
                      │         "error": EmptyInputError naming the item (file and line, prompt number)

    config dataclass ──► check_fields(cfg, "train.")   every int/float field: the declared type,
                      │                                 finite floats, integers within int64
                      └► check_range("train.lr", v, gt=0)   one field's bounds, one-line ConfigError

    a value from a user's file ──► integer / number / boolean(value, item="f.jsonl line 3: 'label'")
                      (JSON/TOML `true` is no integer, "false" no boolean: one-line error naming the item)

    a seed and a batch ──► check_seeds(seed, rows)   row i draws from seed + i: the last must be int64

Every place that takes text from a user (prompts of `tinylm sample`, `Run.generate/stream/complete`
and batches of them, evaluation contexts and choices, cloze items, and later the server's prompts
and chat messages and fine-tuning records) encodes it with `encode_text`, so a text that encodes to
nothing (whitespace for the word tokenizer) behaves the same everywhere: as the empty prompt where
that has a meaning, else as a one-line error naming the item. Every config section's `validate()`
starts with `check_fields` and states each numeric field's range with `check_range`, so a NaN,
an infinity or a value of the wrong type is a one-line `ConfigError` whatever route it came by
(flags, `--set`, TOML, config.json or Python keywords). Numbers and booleans read from other files
(multiple-choice records, a Hugging Face config.json or generation_config.json) go through
`integer`, `number` and `boolean`, and every seed derived from a user's seed through `check_seeds`.
See docs/input-rules.md.

Torch-free: `tinylm.config` imports it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any, Literal, Protocol

from tinylm.errors import ConfigError, DataError, TinylmError

INT64_MAX = 2**63 - 1  # integers are stored in int64 tensors and seeds; larger ones are refused
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32 (smaller values flush towards 0)
FLOAT32_MAX = 3.4028234663852886e38


class EmptyInputError(DataError):
    """A user text that encodes to no tokens where tokens are needed."""


class _Encodes(Protocol):
    unit: str

    def encode(self, text: str) -> list[int]: ...

    def start_ids(self) -> list[int]: ...

    def prompt_ids(self, text: str) -> list[int]: ...


def encode_text(tokenizer: _Encodes, text: str, *, item: str = "the prompt",
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


# --------------------------------------------------------------------------- numbers


def is_integer(value: Any) -> bool:
    """Whether `value` is an integer and not a bool (`True` is an int in Python; JSON's and TOML's
    `true` is no number)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    """A value as the user wrote it in JSON or TOML (`true`, `"2"`, `2.5`), shortened."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def integer(value: Any, item: str, *, error: type[TinylmError] = DataError, note: str = "") -> int:
    """`value`, an integer read from a user's file (a JSON record, a config), or a one-line `error`
    naming `item` (e.g. "data.jsonl line 3: 'label'"): a bool (JSON's `true`), a string, a float
    and an integer outside int64 are refused, as the config fields refuse them. `note` is appended
    to the message (what the number means)."""
    if not is_integer(value):
        raise error(f"{item} must be an integer{note}, got {_shown(value)}")
    if abs(value) > INT64_MAX:
        raise error(f"{item} must be an integer of at most {INT64_MAX:,} in size{note}, got {value:,}")
    return value


def number(value: Any, item: str, *, error: type[TinylmError] = DataError) -> float:
    """`value`, a finite number (int or float, not a bool) read from a user's file, as a float; else
    a one-line `error` naming `item`."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise error(f"{item} must be a finite number, got {_shown(value)}")
    return float(value)


def boolean(value: Any, item: str, *, error: type[TinylmError] = DataError) -> bool:
    """`value`, a JSON or TOML boolean (`true`/`false`) read from a user's file; else a one-line
    `error` naming `item` (the string "false" is not false, and 0 is not a boolean)."""
    if not isinstance(value, bool):
        raise error(f"{item} must be true or false, got {_shown(value)}")
    return value


_MISSING: Any = object()


class Fields:
    """Typed reads of a JSON object from a user's file (a Hugging Face config.json, a record):
    `Fields(config, "model/config.json").int("n_layer")`. Each read is the value, the default when
    the key is absent or null, or a one-line `error` naming "origin: key" (missing, or of the wrong
    type: `true` for an integer, `"false"` for a boolean)."""

    def __init__(self, values: dict[str, Any], origin: str, error: type[TinylmError] = ConfigError):
        self.values, self.origin, self.error = values, origin, error

    def get(self, key: str, default: Any = _MISSING) -> Any:
        value = self.values.get(key)
        if value is None:
            if default is _MISSING:
                raise self.error(f"{self.origin}: {key} is missing")
            return default
        return value

    def _typed(self, key: str, default: Any, read: Any) -> Any:
        value = self.get(key, default)
        return value if key not in self.values or self.values[key] is None else read(
            value, f"{self.origin}: {key}", error=self.error)

    def int(self, key: str, default: Any = _MISSING) -> Any:
        return self._typed(key, default, integer)

    def float(self, key: str, default: Any = _MISSING) -> Any:
        return self._typed(key, default, number)

    def bool(self, key: str, default: Any = _MISSING) -> Any:
        return self._typed(key, default, boolean)

    def str(self, key: str, default: Any = _MISSING) -> Any:
        value = self.get(key, default)
        if key in self.values and self.values[key] is not None and not isinstance(value, str):
            raise self.error(f"{self.origin}: {key} must be a string, got {_shown(value)}")
        return value


def check_seeds(seed: int | None, rows: int, *, item: str = "seed", unit: str = "row") -> None:
    """The one rule for seeds derived from a user's seed (the CLI, the Python API and the server share
    it): row i of a seeded batch (sample i of `--num-samples`, prompt i of a batch, choice i of a
    request) draws from a generator of its own seeded `seed + i`, so `seed + rows - 1` must still be
    an int64 seed. Otherwise a one-line ConfigError before any work names the largest seed that
    works. Seeds are never wrapped: every seed the rule allows draws what it drew before it."""
    if seed is None or rows <= 1 or not is_integer(seed) or seed + rows - 1 <= INT64_MAX:
        return
    raise ConfigError(f"{item} {seed} with {rows:,} {unit}s: {unit} {rows:,} would draw from seed {seed + rows - 1} "
                      f"({item} + {rows - 1:,}), past the largest seed {INT64_MAX}; give a {item} of at most "
                      f"{INT64_MAX - rows + 1}")


def unsigned_seed(seed: int) -> int:
    """`seed` (any int64) as the non-negative seed numpy's generators require: seed mod 2^64, the
    way torch.Generator.manual_seed reads a negative seed. The same for every seed >= 0; a negative
    one (`--split-seed -1`) works instead of failing deep inside numpy."""
    return seed % 2**64

def _kinds(typ: Any) -> tuple[type, ...]:
    return tuple(t for t in (typing.get_args(typ) or (typ,)) if t in (int, float))


def check_fields(cfg: Any, prefix: str = "") -> None:
    """Refuse, for every numeric field of dataclass `cfg` (annotated int or float, optionally
    `| None`), a value of the wrong type (a bool, a string, a float where an int belongs), a
    float that is NaN or infinite, and an integer outside int64. `prefix` names the section in
    messages ("train."). Ranges are each field's own (`check_range`). An integer in a float
    field (`cfg.train.beta1 = 0`) is stored back as that float, so every consumer sees the
    declared type (torch's optimizers refuse betas that mix int and float)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        kinds = _kinds(hints.get(f.name))
        value = getattr(cfg, f.name)
        if not kinds or (value is None and type(None) in typing.get_args(hints[f.name])):
            continue
        key = prefix + f.name
        if isinstance(value, bool) or not isinstance(value, (int, float) if float in kinds else kinds):
            wanted = "an integer" if float not in kinds else "a number"
            raise ConfigError(f"{key} must be {wanted}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
        if isinstance(value, int) and abs(value) > INT64_MAX:
            raise ConfigError(f"{key} must be an integer of at most {INT64_MAX:,} in size, got {value:,}")
        if isinstance(value, int) and int not in kinds:
            setattr(cfg, f.name, float(value))


def _bounds(gt: float | None, ge: float | None, lt: float | None, le: float | None) -> str:
    low = f"({gt:g}" if gt is not None else f"[{ge:g}" if ge is not None else None
    high = f"{lt:g})" if lt is not None else f"{le:g}]" if le is not None else None
    if low and high:
        return f"in {low}, {high}"
    if low:
        return f"{'>' if gt is not None else '>='} {low[1:]}"
    return f"{'<' if lt is not None else '<='} {high[:-1]}"


def check_range(key: str, value: float, *, gt: float | None = None, ge: float | None = None,
                lt: float | None = None, le: float | None = None, note: str = "") -> None:
    """A one-line ConfigError unless `value` is a finite number within the given bounds
    (gt/ge: lower bound, exclusive/inclusive; lt/le: upper bound), e.g.
    `check_range("top_p", 1.5, gt=0, le=1)` -> "top_p must be in (0, 1], got 1.5". `note` is
    appended to the message (what 0 means, what to do)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (gt is None or value > gt) and (ge is None or value >= ge)
    ok = ok and (lt is None or value < lt) and (le is None or value <= le)
    if not ok:
        raise ConfigError(f"{key} must be {_bounds(gt, ge, lt, le)}{note}, got {value!r}")

"""The rules for configuration values and for numbers read from users' files, and `--set` parsing.

    config dataclass ──► check_fields(cfg, "train.")   every int/float field: the declared type,
                      │                                 finite floats, integers within int64
                      └► check_range("train.lr", v, gt=0)   one field's bounds, one-line ConfigError

    a value from a user's file ──► integer / number / boolean(value, item="f.jsonl line 3: 'label'")
                      (JSON/TOML `true` is no integer, "false" no boolean: one-line error naming the item);
                      Fields(obj, origin).int("n_layer"): typed reads of a JSON object

    a seed and a batch ──► check_seeds(seed, rows)   row i draws from seed + i: the last must be int64

    --set section.key=value, TOML, JSON ──► update / set_key / apply_overrides: every key checked against the
                      dataclass (unknown keys get "did you mean"), values converted (`parse_value`) or type-checked

Every config section's `validate()` starts with `check_fields` and states each numeric field's range with
`check_range`, so a NaN, an infinity or a value of the wrong type is a one-line `ConfigError` whatever
route it came by (flags, `--set`, TOML, config.json or Python keywords). Numbers and booleans read from
other files (multiple-choice records, a Hugging Face config.json or generation_config.json) go through
`integer`, `number` and `boolean`, and every seed derived from a user's seed through `check_seeds`.
User text (prompts, contexts, records) is encoded by `tinylm.tokenizers.prompt.encode_text`.
See docs/input-rules.md. Torch-free.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from typing import Any

from tinylm.errors import ConfigError, DataError, TinylmError

INT64_MAX = 2**63 - 1  # integers are stored in int64 tensors and seeds; others are refused
INT64_MIN = -(2**63)
INT64_RANGE = f"from {INT64_MIN:,} to {INT64_MAX:,} (int64)"


def in_int64(value: int) -> bool:
    """Whether integer `value` fits an int64 (seeds, tensor entries): INT64_MIN <= value <= INT64_MAX."""
    return INT64_MIN <= value <= INT64_MAX
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32 (smaller values flush towards 0)
FLOAT32_MAX = 3.4028234663852886e38


def require(ok: bool, message: str) -> None:
    """A one-line ConfigError with `message` unless `ok` (the config sections' checks)."""
    if not ok:
        raise ConfigError(message)


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
    if not in_int64(value):
        raise error(f"{item} must be an integer {INT64_RANGE}{note}, got {value:,}")
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
        if isinstance(value, int) and not in_int64(value):
            raise ConfigError(f"{key} must be an integer {INT64_RANGE}, got {value:,}")
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


# --------------------------------------------------------------------------- --set, TOML and JSON into dataclasses


def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def valid_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys = []
    for name in _field_types(cfg):
        value = getattr(cfg, name)
        if dataclasses.is_dataclass(value):
            keys += valid_keys(value, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _unknown(key: str, cfg: Any, origin: str) -> ConfigError:
    known = valid_keys(cfg)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
    return ConfigError(f"{origin}: unknown config key {key!r}; {hint}")


def _coerce(value: Any, typ: Any, key: str, origin: str) -> Any:
    """Check a value already typed (TOML, JSON) against a field's declared type."""
    allowed = typing.get_args(typ) or (typ,)  # `int | None` -> (int, NoneType)
    if value is None and type(None) in allowed:
        return None
    if float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    for t in allowed:
        if t is not type(None) and isinstance(value, t) and not (t is int and isinstance(value, bool)):
            return value
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise ConfigError(f"{origin}: {key} expects {names}, got {value!r}")


def parse_value(text: str, typ: Any, key: str, origin: str = "--set") -> Any:
    """Convert a command-line string to a field's declared type."""
    allowed = typing.get_args(typ) or (typ,)
    if str in allowed:
        return text  # verbatim: a prompt's spaces and newlines matter
    text = text.strip()
    if type(None) in allowed and text.lower() in ("none", "null", ""):
        return None
    if bool in allowed:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{origin}: {key} expects true or false, got {text!r}")
    try:
        if int in allowed:
            return int(text.replace("_", ""))
        if float in allowed:
            return float(text.replace("_", ""))
    except ValueError:
        kind = "an integer" if int in allowed else "a number"
        raise ConfigError(f"{origin}: {key} expects {kind}, got {text!r}") from None
    raise ConfigError(f"{origin}: {key} has an unsupported type")  # pragma: no cover


def _flatten(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in values.items():
        if isinstance(value, dict):
            items += _flatten(value, f"{prefix}{key}.")
        else:
            items.append((prefix + key, value))
    return items


def update(cfg: Any, values: dict[str, Any], origin: str) -> Any:
    """Copy a nested dict (from TOML or JSON) into dataclass `cfg`, checking keys and types."""
    for key, value in _flatten(values):
        set_key(cfg, key, value, origin)
    return cfg


def set_key(cfg: Any, key: str, value: Any, origin: str, parse: bool = False) -> None:
    """Set `section.name` on a config; with `parse`, `value` is command-line text to convert."""
    target, parts = cfg, key.split(".")
    for part in parts[:-1]:
        target = getattr(target, part, None)
        if not dataclasses.is_dataclass(target):
            raise _unknown(key, cfg, origin)
    types = _field_types(target)
    name = parts[-1]
    if name not in types or dataclasses.is_dataclass(getattr(target, name)):
        raise _unknown(key, cfg, origin)
    typed = parse_value(value, types[name], key, origin) if parse else _coerce(value, types[name], key, origin)
    setattr(target, name, typed)


def apply_overrides(cfg: Any, assignments: list[str]) -> None:
    """Apply `--set section.key=value` strings."""
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        set_key(cfg, key.strip(), value, f"--set {item}", parse=True)

"""Presets: TOML recipes shipped in `tinylm/presets/*.toml` (each with a `description` and a `[reference]`
table: the recipe it reproduces and the published result), and user TOML files."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tinylm.config.fields import update
from tinylm.config.run import RunConfig
from tinylm.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None


def preset_names() -> list[str]:
    folder = resources.files("tinylm") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def read_preset(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(preset_names())}")
    text = (resources.files("tinylm") / "presets" / f"{name}.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


@dataclass
class Reference:
    """A preset's [reference] table: the recipe it reproduces and what was published for it."""

    recipe: str = ""  # where the recipe comes from
    params: str = ""  # the parameter count the recipe states or implies, e.g. "30M" ("" = none)
    result: str = ""  # the published result to compare a run against
    vocab: int = 0  # vocabulary size to count parameters with when the data decides it (char tokenizers)


def preset_reference(name: str) -> Reference:
    return update(Reference(), read_preset(name).get("reference", {}), origin=f"preset {name} [reference]")


def load_preset(name: str) -> RunConfig:
    values = read_preset(name)
    values.pop("reference", None)
    cfg = update(RunConfig(), values, origin=f"preset {name}")
    cfg.preset = name
    return cfg


DEFAULT_PRESET = "shakespeare-char"

"""The shipped presets as recipes: what each one trains, the parameter count of its full-size
model, and the published result to compare a run against. `tinylm presets` prints these, and
the README's table of presets is checked against `table()` by the tests.

A preset's TOML holds a `description` paragraph, the [model], [data] and [train] tables of a
RunConfig, and a [reference] table (`config.Reference`): where the recipe comes from, the
parameter count it states, its published result, and for tokenizers whose vocabulary the corpus
decides (char) the vocabulary size to count parameters with.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass

import torch

from tinylm.config import ModelConfig, load_preset, preset_names, preset_reference, read_preset
from tinylm.errors import ConfigError
from tinylm.model import GPT
from tinylm.tokenizers import spec_vocab_size

COLUMNS = ("preset", "parameters", "tokenizer", "data", "result to compare")


@dataclass
class Recipe:
    name: str
    description: str
    params: int  # of the full-size model, with `vocab` token ids
    vocab: int
    tokenizer: str
    data: str  # the source and the training window
    result: str  # the published result ("" for tinylm's own presets: see BENCHMARKS.md)
    recipe: str  # where the recipe comes from
    stated_params: str  # the count the recipe states, e.g. "30M" ("" = none)

    def row(self) -> tuple[str, ...]:
        """One row of the presets table (COLUMNS)."""
        return (self.name, human_count(self.params), self.tokenizer, self.data, self.result or "-")


def count_params(cfg: ModelConfig) -> int:
    """Parameters of a model of this shape, counted without allocating it."""
    with torch.device("meta"):
        return GPT(cfg).num_params()


def human_count(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def parse_count(text: str) -> float:
    """ "30M" -> 30e6, "850K" -> 850e3, "1.2B" -> 1.2e9."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMB]?)\s*", text)
    if not match:
        raise ConfigError(f"cannot read the parameter count {text!r}; write it like 30M or 850K")
    return float(match[1]) * {"": 1, "K": 1e3, "M": 1e6, "B": 1e9}[match[2]]


def recipe(name: str) -> Recipe:
    cfg, ref = load_preset(name), preset_reference(name)
    vocab = cfg.model.vocab_size or spec_vocab_size(cfg.data.tokenizer) or ref.vocab
    if not vocab:
        raise ConfigError(f"preset {name}: the {cfg.data.tokenizer} vocabulary depends on the corpus; "
                          "give its size as reference.vocab in the preset's TOML")
    cfg.model.vocab_size = cfg.model.embedding_rows(vocab)
    window = f"context {cfg.seq_len}" + (f" (model {cfg.model.context})" if cfg.seq_len < cfg.model.context else "")
    cap = f", {cfg.data.max_tokens / 1e6:g}M train tokens" if cfg.data.max_tokens else ""
    return Recipe(name, " ".join(cfg.description.split()), count_params(cfg.model), cfg.model.vocab_size,
                  cfg.data.tokenizer, f"{cfg.data.source}{cap}, {window}", ref.result, ref.recipe, ref.params)


def table() -> list[tuple[str, ...]]:
    return [recipe(name).row() for name in preset_names()]


def markdown_table() -> str:
    """The presets table in Markdown (the README's copy is checked against it)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| `" + row[0] + "` | " + " | ".join(row[1:]) + " |" for row in table()]
    return "\n".join(lines)


def describe(name: str, settings: bool = False) -> str:
    """A preset's card for `tinylm presets`: name, size, data, description and published result;
    with `settings`, also every value the preset sets."""
    r = recipe(name)
    wrap = textwrap.TextWrapper(width=100, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False)
    lines = [f"{r.name}: {human_count(r.params)} parameters ({r.vocab:,} token ids), {r.tokenizer} tokenizer, {r.data}",
             wrap.fill(r.description)]
    if r.result:
        stated = f" (the recipe states {r.stated_params} parameters)" if r.stated_params else ""
        lines.append(wrap.fill(f"Result to compare: {r.result}{stated}."))
    if r.recipe:
        lines.append(wrap.fill(f"Recipe: {r.recipe}."))
    if settings:
        values = read_preset(name)
        lines.append("  settings (change any with --set section.key=value):")
        for section in ("model", "data", "train"):
            lines += [f"    {section}.{key} = {json.dumps(value)}" for key, value in values.get(section, {}).items()]
    return "\n".join(lines)

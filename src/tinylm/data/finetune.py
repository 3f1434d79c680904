"""A fine-tune's data, as its config names it: text prepared with the base's tokenizer, or examples.

    cfg.data + finetune.format (auto: detected) ──► "text": text_data_dir (data.dir as given, or the source
        (+ finetune.val_data) prepared once with the base's tokenizer into the cache) ──► windows
                                                ├─► "instruction" | "chat": run_examples (the template
        chosen for the data and the vocabulary, recorded in cfg) ──► Examples (examples.py)
                                                └─► "preference" (finetune.objective dpo): run_pairs (the
        base's own template if it has one, else as for chats) ──► Pairs (preferences.py)
"""

from __future__ import annotations

from pathlib import Path

from tinylm.chat.encode import choose_template
from tinylm.config import RunConfig
from tinylm.console import console
from tinylm.data.examples import Examples, load_examples
from tinylm.data.preferences import Pairs, load_pairs
from tinylm.data.prepare import is_prepared, prepare_config, prepared_dir_for, read_meta
from tinylm.data.records import detect_format
from tinylm.data.sources import Source, cache_key
from tinylm.data.spec import read_source
from tinylm.errors import ConfigError, DataError
from tinylm.tokenizers import Tokenizer


def text_data_dir(cfg: RunConfig, tokenizer: Tokenizer) -> Path:
    """A prepared data directory of `cfg.data` tokenized with the base's tokenizer: data.dir as given
    (refused if another tokenizer made it), or the source (+ finetune.val_data as its validation split)
    prepared once into the cache, keyed by the tokenizer's fingerprint."""
    data, base = cfg.data, cfg.finetune.base
    if data.dir:
        meta = read_meta(data.dir)
        if meta["tokenizer"]["fingerprint"] != tokenizer.fingerprint():
            raise DataError(f"{data.dir} was tokenized with another tokenizer ({meta['tokenizer']['spec']}) than the "
                            f"base run {base}; prepare the text with `tinylm prepare SOURCE --tokenizer-from {base} "
                            "--out DATA_DIR`, or give the text file itself")
        return Path(data.dir)
    src = read_source(data.source, data.errors, data.text_field, data.source_dir, data.hf_split)
    if not data.source_splits:
        src = src.training_split()
    if cfg.finetune.val_data:
        val = read_source(cfg.finetune.val_data, data.errors, data.text_field, data.source_dir)
        train_stream = src.streams["train" if src.has_splits else "all"]
        src = Source(f"{src.name}+{val.name}", {"train": train_stream, "val": val.streams["all"]},
                     cache_key(src.key, val.key), None, {**src.files, **val.files},
                     versions={**src.versions, **val.versions})
    out = prepared_dir_for(src, data, tokenizer)
    if not is_prepared(out, src):
        prepare_config(src, tokenizer, out, data)
        console.print(f"prepared {src.name} with the base's {tokenizer.kind} tokenizer into {out}")
    return out


def resolve_format(cfg: RunConfig) -> str:
    """finetune.format of `cfg`, detected from the data when "auto" (and recorded in `cfg`)."""
    ft = cfg.finetune
    source = cfg.data.dir or cfg.data.source
    fmt = ft.format if ft.format != "auto" else detect_format(source, cfg.data.text_field, cfg.data.errors)
    if cfg.data.dir and fmt != "text":
        raise ConfigError(f"{cfg.data.dir} is a prepared data directory: it can only be fine-tuned on as text")
    if (fmt == "preference") != (ft.objective == "dpo"):
        raise ConfigError(f"{source} holds preference pairs: fine-tune on them with --method dpo" if fmt == "preference"
                          else f"--method dpo trains on preference pairs, {{\"prompt\", \"chosen\", \"rejected\"}} "
                          f"records, but {source} holds {fmt} data; give a file of pairs")
    ft.format = fmt
    return fmt


def run_examples(cfg: RunConfig, tokenizer: Tokenizer, quiet: bool = False) -> Examples:
    """The instruction or chat examples a fine-tune's config names (finetune.template resolved into `cfg`)."""
    ft = cfg.finetune
    fmt = resolve_format(cfg)
    template = choose_template(ft.template, fmt, tokenizer)
    ft.template = template.name
    return load_examples(cfg.data.source, fmt, tokenizer, template, cfg.seq_len, val_spec=ft.val_data,
                         val_fraction=cfg.data.val_fraction, seed=cfg.data.split_seed,
                         train_on_prompt=ft.train_on_prompt, quiet=quiet, errors=cfg.data.errors)


def run_pairs(cfg: RunConfig, tokenizer: Tokenizer, quiet: bool = False, base_template: str = "") -> Pairs:
    """The preference pairs a DPO fine-tune's config names. finetune.template (resolved into `cfg`): as given,
    else `base_template`, the base run's own (a DPO run after an instruction or chat fine-tune keeps its
    format), else the default for chats and the vocabulary."""
    from tinylm.chat.templates import get_template

    ft = cfg.finetune
    resolve_format(cfg)
    base_template = base_template if not ft.template else ""
    template = get_template(base_template) if base_template else choose_template(ft.template, "chat", tokenizer)
    ft.template = template.name
    return load_pairs(cfg.data.source, tokenizer, template, cfg.seq_len, val_spec=ft.val_data,
                      val_fraction=cfg.data.val_fraction, seed=cfg.data.split_seed, quiet=quiet,
                      errors=cfg.data.errors)

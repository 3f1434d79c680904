"""`tinylm finetune`: adapt a base run to new text, instructions or chats, through the one trainer.

    base run (config.json, tokenizer, weights) ──► finetune_config: the base's model and tokenizer, the
        fine-tuning defaults (FINETUNE_DEFAULTS), then preset / --config / --set / flags; finetune.base,
        base_weights and base_sha256 recorded
    ──► train(cfg) (launch.py) composes the trainer with what this module opens:
          open_finetune_data  text ─► the base's tokenizer prepares it (cached by tokenizer fingerprint) ─► windows
                              instruction / chat records ─► template ─► examples (data/finetune.py)
                              preference pairs (--method dpo) ─► template ─► pairs ─► PairData (dpo.py)
          start_from_base     the base weights (sha256 checked) ─► LoRA: add the adapter, freeze the rest
    ──► run dir: LoRA ─► adapter.safetensors (+ the base's path and sha256 in config.json);
                 full ─► model.safetensors, a standalone run

The rules of a fine-tune's settings (`tinylm finetune` only parses): `new_config` / `resumed_config`, then
`check_model_changes` and `settle` once flags are in. `tinylm merge` (folding the adapter into the base's
weights) is run/merge.py.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from tinylm import fileio
from tinylm.config import DataConfig, LoRAConfig, RunConfig, TrainConfig, update
from tinylm.data.finetune import resolve_format, run_examples, run_pairs, text_data_dir
from tinylm.errors import CheckpointError, ConfigError
from tinylm.model import GPT, lora
from tinylm.run.layout import CONFIG_FILE, base_weights, read_config
from tinylm.run.weights import FULL
from tinylm.tokenizers import Tokenizer, load_tokenizer
from tinylm.training import resume
from tinylm.training.data import ExampleData, WindowData

# train.* values a fine-tune starts from (before any preset, --config, --set or flag): a few epochs at a
# learning rate suited to the method, no weight decay (it would pull LoRA's B, or the weights, to zero)
FINETUNE_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"lr": 1e-3, "min_lr": 1e-4},
    "full": {"lr": 1e-4, "min_lr": 1e-5},
    "any": {"epochs": 3.0, "warmup_steps": 10, "weight_decay": 0.0, "batch_size": 8, "eval_interval": 50,
            "log_interval": 10, "eval_tokens": 0},
}
FINETUNE_SECTIONS = ("train", "finetune", "lora", "dpo", "data")  # what a preset or --config may set for a fine-tune


def finetune_config(base: str | Path, source: str = "", method: str = "lora") -> RunConfig:
    """The configuration of a fine-tune of run `base` on `source` before user overrides: the base's
    model, tokenizer and train.dtype, FINETUNE_DEFAULTS for `method`, and the base weights' file and
    sha256 recorded."""
    base = Path(base)
    if not (base / CONFIG_FILE).is_file():
        what = "does not exist" if not base.exists() else f"is not a tinylm run directory (no {CONFIG_FILE})"
        raise CheckpointError(f"the base run {base} {what}; give a run directory trained with `tinylm train` "
                              "or imported with `tinylm import`")
    base_cfg = read_config(base)
    cfg = RunConfig(preset="", description=f"{method} fine-tune of {fileio.absolute(base)}")
    cfg.model = copy.deepcopy(base_cfg.model)
    cfg.data = DataConfig(source=source, tokenizer=base_cfg.data.tokenizer)
    cfg.train = TrainConfig()
    update(cfg.train, {**FINETUNE_DEFAULTS["any"], **FINETUNE_DEFAULTS.get(method, {})}, origin="fine-tuning defaults")
    cfg.train.dtype = base_cfg.train.dtype  # the precision the base was trained in
    cfg.finetune.method = method
    cfg.finetune.base = str(base.resolve())
    cfg.lora = LoRAConfig()
    base_weights(cfg)  # checks the base and records its weights' name and sha256
    return cfg


def apply_finetune_table(cfg: RunConfig, values: dict[str, Any], origin: str) -> None:
    """Apply a preset's or TOML file's tables to a fine-tune: [train], [finetune], [lora] and [data]; the
    model is the base's ([model] may only change dropout)."""
    values = dict(values)
    values.pop("reference", None)
    values.pop("description", None)
    model = values.pop("model", {}) or {}
    if set(model) - {"dropout"}:
        raise ConfigError(f"{origin}: a fine-tune keeps its base run's model; only model.dropout may change "
                          f"(got {', '.join(f'model.{k}' for k in model)})")
    data = dict(values.pop("data", {}) or {})
    for key in ("source", "dir", "tokenizer"):  # the data is --data, the tokenizer the base's
        data.pop(key, None)
    unknown = set(values) - set(FINETUNE_SECTIONS)
    if unknown:
        raise ConfigError(f"{origin}: a fine-tune takes tables {', '.join(FINETUNE_SECTIONS)}, "
                          f"not {sorted(unknown)[0]}")
    update(cfg, {**values, "data": data, "model": model}, origin)


# --------------------------------------------------------------------------- what train() composes


def start_from_base(model: GPT, cfg: RunConfig) -> None:
    """Load the base run's weights into `model` (checked against the recorded sha256) and, for LoRA, add
    the adapter "default" (base frozen)."""
    FULL.load(model, base_weights(cfg))
    if cfg.finetune.method == "lora":
        lora.add_lora(model, cfg.lora)
        lora.set_active(model, "default")


def open_finetune_data(cfg: RunConfig, quiet: bool = False, data_dir: str | None = None) -> tuple[Any, Tokenizer]:
    """The data of a fine-tune and the base's tokenizer: windows of text (continued pre-training) or
    instruction / chat examples (finetune.format and finetune.template are resolved into `cfg`).
    `data_dir`: the text's prepared directory as rank 0 opened it (other processes never prepare)."""
    base_weights(cfg)
    tokenizer = load_tokenizer(cfg.finetune.base)
    fmt = resolve_format(cfg)
    if fmt == "text":
        return WindowData(data_dir or text_data_dir(cfg, tokenizer)), tokenizer
    if fmt == "preference":
        from tinylm.training.dpo import PairData

        base_template = read_config(cfg.finetune.base).finetune.template if not cfg.finetune.template else ""
        return PairData(run_pairs(cfg, tokenizer, quiet=quiet, base_template=base_template)), tokenizer
    return ExampleData(run_examples(cfg, tokenizer, quiet=quiet)), tokenizer


# --------------------------------------------------------------------------- the rules of a fine-tune's settings


def resumed_config(run_dir: str | Path, flags: list[str], sets: list[str]) -> RunConfig:
    """The config to resume fine-tune `run_dir` with: its own, where only train.* settings may change
    (`flags`: the dotted keys of the flags given, `sets`: the --set assignments); one-line errors for other
    keys, a run that is not a fine-tune, or a merged run (it has no training state)."""
    fixed = sorted(key for key in flags if not key.startswith("train."))
    if fixed:
        raise ConfigError(f"{fixed[0]} cannot change when resuming: a resumed fine-tune keeps its LoRA, data and "
                          "template settings (only train.* ones, such as --lr and --max-steps, may change)")
    saved = read_config(run_dir)
    if not saved.finetune.method:
        raise ConfigError(f"{run_dir} is not a fine-tune; continue it with `tinylm train --resume`")
    if saved.finetune.merged:
        raise ConfigError(f"{run_dir} is a merged run (standalone weights, no training state); fine-tune it "
                          f"further as a base: tinylm finetune {run_dir} --data SOURCE --out NEW_RUN")
    return resume.resumed_config(run_dir, sets)


def new_config(base: str, source: str, out: str, method: str = "", tables: list[tuple[dict[str, Any], str]] = ()
               ) -> RunConfig:
    """The config of a new fine-tune of `base` on `source` into `out` before flags: `finetune_config`, then
    each (TOML tables, origin) of a preset or --config file (`apply_finetune_table`)."""
    if not base or not source or not out:
        raise ConfigError("give the base run, the data and the output: tinylm finetune BASE_RUN --data SOURCE "
                          "--out RUN_DIR")
    cfg = finetune_config(base, method=method or "lora")
    for values, origin in tables:
        apply_finetune_table(cfg, values, origin)
    return cfg


def check_model_changes(sets: list[str]) -> None:
    """A fine-tune keeps its base's model: of the model.* keys only model.dropout may be set (`sets`: the
    --set assignments)."""
    model = [item for item in sets if item.startswith("model.") and not item.startswith("model.dropout=")]
    if model:
        raise ConfigError(f"--set {model[0]}: a fine-tune keeps its base run's model (only model.dropout may "
                          "change)")


def settle(cfg: RunConfig, *, steps_given: bool, epochs_given: bool, resume: bool) -> RunConfig:
    """The last rules once every setting is in: a prepared data directory given as --data is read as one;
    --max-steps alone replaces the default epochs; --epochs 0 alone says nothing about how long to train."""
    source = cfg.data.source
    if source and os.path.isdir(source) and os.path.isfile(os.path.join(source, "meta.json")):
        cfg.data.dir, cfg.data.source = source, ""  # a prepared data directory
    if steps_given and not epochs_given and not resume:
        cfg.train.epochs = 0.0  # --max-steps replaces the default epochs
    if epochs_given and not steps_given and not resume and cfg.train.epochs == 0:
        raise ConfigError("--epochs 0 with no --max-steps says nothing about how long to train; give --epochs N "
                          "(passes over the data) or --max-steps N")
    return cfg

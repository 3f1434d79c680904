"""The run directory, the unit users move around: its file names and what tells a run directory.

    config.json          the resolved RunConfig (enough to rebuild the model; every path in it absolute)
    tokenizer.tinylm.json
    model.safetensors    latest weights        best.safetensors   best validation weights
    train_state.pt       optimizer, RNG, loader position, step (see training/checkpoint.py)
    metrics.jsonl  loss.png  perplexity.png  evals.jsonl  checkpoints/  (tensorboard, wandb)

A LoRA fine-tune (`tinylm finetune`, finetune.method = "lora") holds no model weights of its own:

    adapter.safetensors  latest adapter        best_adapter.safetensors   best validation adapter
    config.json          finetune.base (the base run), finetune.base_weights + base_sha256 (the base
                         weights it was trained on: loading refuses base weights that changed since)

`read_config` reads config.json (also as older versions wrote it, with relative paths); `base_weights`
finds and checks a fine-tune's base weights; `is_run_dir` tells exporters a folder they must not write
into. Which weights files a run has is its weights format (weights.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tinylm import fileio
from tinylm.version import __version__
from tinylm.config import RunConfig, absolute_paths
from tinylm.errors import CheckpointError, ConfigError
from tinylm.tokenizers import TOKENIZER_FILE

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
STATE_FILE = "train_state.pt"
ADAPTER_FILE = "adapter.safetensors"  # a LoRA run's latest adapter (the base's weights stay in the base run)
BEST_ADAPTER_FILE = "best_adapter.safetensors"
METRICS_FILE = "metrics.jsonl"
EVALS_FILE = "evals.jsonl"
PLOTS = ("loss.png", "perplexity.png")
CHECKPOINTS_DIR = "checkpoints"  # copies of the last train.keep_last checkpoints, one folder per step
TRACKER_FILES = ("tensorboard", "wandb", "wandb_id.txt")  # written by the optional experiment trackers
RUN_FILES = {CONFIG_FILE, MODEL_FILE, BEST_FILE, STATE_FILE, METRICS_FILE, EVALS_FILE, *PLOTS,
             TOKENIZER_FILE, CHECKPOINTS_DIR, *TRACKER_FILES, ADAPTER_FILE, BEST_ADAPTER_FILE, "tokenizer.json"}


def write_config(run_dir: Path, cfg: RunConfig) -> None:
    fileio.write_json(run_dir / CONFIG_FILE, cfg.to_dict())


def folder_file(folder: Path, name: str, *, is_file: str, absent: str, missing: str) -> Path:
    """`folder / name` of a folder that must hold the file `name` (a run directory, a model directory to
    import), else a one-line CheckpointError: `is_file` when `folder` is a file, `absent` when it does not
    exist, `missing` when it lacks `name`."""
    if folder.is_file():
        raise CheckpointError(is_file)
    if not folder.is_dir():
        raise CheckpointError(absent)
    if not (folder / name).is_file():
        raise CheckpointError(missing)
    return folder / name


def read_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    path = folder_file(run_dir, CONFIG_FILE, absent=f"run directory {run_dir} does not exist",
                       is_file=f"{run_dir} is a file, not a run directory; give the directory a tinylm train, "
                               "finetune or import wrote (it holds config.json)",
                       missing=f"{run_dir} is not a tinylm run directory (no {CONFIG_FILE})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # not JSON, or not even text
        raise CheckpointError(f"{path} is corrupt ({e}); restore it from a copy") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is corrupt (a JSON {type(data).__name__}, not the run's settings); "
                              "restore it from a copy")
    try:
        cfg = RunConfig.from_dict(data, origin=str(path)).validate()
    except ConfigError as e:
        raise CheckpointError(f"{path} does not fit this tinylm {__version__}: {e}") from None
    origin = working_dir_of(run_dir, cfg.train.out_dir)
    return absolute_paths(cfg, origin) if origin is not None else cfg


def working_dir_of(run_dir: Path, out_dir: str) -> Path | None:
    """Where the command that wrote a config with relative paths ran (earlier versions recorded paths as
    typed; now they are absolute): the run directory's absolute path less the relative train.out_dir it
    recorded ("R" in /home/me/R: /home/me). None when the config cannot tell (no relative out_dir, or a
    moved run)."""
    if not out_dir or os.path.isabs(out_dir):
        return None
    parts = Path(os.path.normpath(out_dir)).parts
    here = Path(fileio.absolute(run_dir)).parts
    if ".." in parts or len(parts) >= len(here) or here[-len(parts):] != parts:
        return None
    return Path(*here[:-len(parts)])


def is_run_config(path: Path) -> bool:
    """Whether `path` is a tinylm config.json (it has model and train sections)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model" in config and "train" in config


# recorded paths a resumed run reads again (data.source and finetune.val_data only when they name a path)
RESUMED_PATHS = ("data.source", "data.dir", "train.hellaswag_file", "finetune.base", "finetune.val_data")


def check_recorded_paths(cfg: RunConfig, run_dir: str | Path, command: str) -> None:
    """Refuse, before any work, a resume of `run_dir` whose config.json records a file or folder that no
    longer exists (the run, or what it was trained on, was moved): one line naming the field, the path and
    the fix that works (set the field in config.json to the new place, or put the file back), then
    `command` again. Dataset names and hf: specs are not paths (absolute paths are recorded for files)."""
    config = (Path(run_dir) / CONFIG_FILE).absolute()
    for key in RESUMED_PATHS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value and os.path.isabs(value) and not os.path.exists(value):
            raise ConfigError(f"{config} records {key} = {value}, which no longer exists; if it was moved, set "
                              f"{key} in that file to its new place (the same {'run' if key == 'finetune.base' else 'file'}"
                              f": a different one would not continue the same run), or put it back; then run "
                              f"{command} again")


def is_run_dir(path: Path) -> bool:
    """Whether `path` is a tinylm run directory (a training state, or a tinylm config.json)."""
    return (Path(path) / STATE_FILE).exists() or is_run_config(Path(path) / CONFIG_FILE)


def base_weights(cfg: RunConfig, run_dir: Path | str = "") -> Path:
    """The base weights of a fine-tuned run (cfg.finetune): the file it was fine-tuned from, checked
    against the recorded sha256 (recorded here if not yet). One-line errors for a base run that is
    missing, an adapter itself, or whose weights changed since."""
    ft = cfg.finetune
    base = Path(ft.base)
    what = f"the base run {base}" + (f" of {run_dir}" if run_dir else "")
    if not base.is_dir():
        raise CheckpointError(f"{what} does not exist; give an existing run directory (trained with `tinylm "
                              "train` or imported with `tinylm import`)" + (", or set finetune.base in "
                              f"{Path(run_dir) / CONFIG_FILE} to where it moved" if run_dir else ""))
    base_cfg = read_config(base)
    if base_cfg.finetune.is_adapter_run:
        raise CheckpointError(f"{base} is itself a LoRA adapter run; merge it first (`tinylm merge {base} --out "
                              "MERGED`) and fine-tune the merged run")
    path = base / ft.base_weights if ft.base_weights else best_weights(base, BEST_FILE, MODEL_FILE)
    if not path.is_file():
        raise CheckpointError(f"{what} has no weights file {path.name}; train it first, or restore the file")
    sha = fileio.sha256_file(path)
    if not ft.base_sha256:
        ft.base_weights, ft.base_sha256 = path.name, sha
    elif sha != ft.base_sha256:
        raise CheckpointError(f"the base weights {path} changed since {run_dir or 'this adapter'} was trained on "
                              f"them (sha256 {ft.base_sha256[:12]}... recorded, {sha[:12]}... now); restore those "
                              "weights or fine-tune again on the new ones")
    return path


def best_weights(run_dir: Path, best: str, latest: str, checkpoint: str = "best") -> Path:
    """The weights file of `checkpoint` (best: `best` if the run has it, else `latest`; latest; or a path)."""
    if checkpoint == "best":
        return run_dir / best if (run_dir / best).is_file() else run_dir / latest
    if checkpoint == "latest":
        return run_dir / latest
    return Path(checkpoint)

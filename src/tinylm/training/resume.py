"""What a resumed run may change, and how the changes take effect.

    resumed_config(run_dir, --set items): the run's own config.json, where only train.* may be set

    config.json (saved) ─┐
                         ├─► check_resume: model.* differs, the data (DATA_KEYS) differs, or a REFUSED
    the resuming config ─┘      train.* key differs ─► ConfigError (before any data is read or model built)
                         │
    train_state.pt's process count ─► keep_batch: on another number of processes the batch is split
                         │              anew so that a step keeps its tokens (and windows), and says so
                         ▼
    Trainer (built from the resuming config) ─► restore(): the checkpoint's tokens per step and data
                         │                        checked; optimizer state loaded, then every group's
                         │                        hyperparameters set from the resuming config
                         ▼                        (apply_hyperparameters), so lr, betas, eps,
    config.json rewritten with the resuming         weight_decay, muon lr and momentum are the ones given
    config; metrics.jsonl and the trackers log it

Every `train.*` key is in exactly one of the two tables below (tests/test_resume_overrides.py
checks that), so a new field has to be decided here. A key in `RESUMABLE` takes effect from the first resumed step
exactly as given; a key in `REFUSED` is a one-line error: it would change the batches already
drawn or the optimizer state's kind and shape, so the resumed run could not continue the same run.
What a refused key decides stays frozen through the other routes too: the tokens per step (batch_size,
grad_accum, batch_tokens) through the number of processes (`keep_batch`), the windows (seq_len) through
the model's context, the data and tokenizer through `data.*` (`DATA_KEYS`) and the prepared data itself
(its training tokens and source checksum are in every checkpoint: `Trainer.restore`).
"""

from __future__ import annotations

import dataclasses

import torch

from tinylm.config import RunConfig
from tinylm.errors import ConfigError
from tinylm.run.layout import RESUMED_PATHS, check_recorded_paths, read_config


def resumed_config(run_dir: str, sets: list[str]) -> RunConfig:
    """The config to resume `run_dir` with before its train.* flags: the saved one (train.out_dir the
    directory given); a --set of anything but train.* is a one-line error."""
    cfg = read_config(run_dir)
    cfg.train.out_dir = str(run_dir)
    for item in sets:
        if not item.startswith("train."):
            raise ConfigError(f"--set {item}: only train.* settings can change when resuming"
                              + (" (a moved file: set its new place in the run's config.json)"
                                 if item.split("=")[0] in RESUMED_PATHS else ""))
    verb = "finetune" if cfg.finetune.method else "train"
    check_recorded_paths(cfg, run_dir, f"`tinylm {verb} --resume {run_dir}`")
    return cfg


# key -> where the new value takes effect
RESUMABLE: dict[str, str] = {
    "out_dir": "the run directory being resumed",
    "device": "the device the resumed run trains on (the optimizer state moves with the weights)",
    "dtype": "autocast precision from the first resumed step",
    "compile": "torch.compile of the resumed model",
    "threads": "CPU threads of the resumed process",
    "max_steps": "the last step; the schedule's progress is step / max_steps from here on "
                 "(a run with train.epochs given anew: max_steps is derived from them)",
    "epochs": "max_steps = epochs x the training tokens / tokens per step",
    "time_budget": "total wall-clock seconds, counted from the run's start (the time already spent counts)",
    "lr": "every AdamW/Adam group's base_lr (the schedule multiplies it)",
    "min_lr": "the schedule's floor",
    "schedule": "the learning-rate curve from the next step",
    "cooldown": "the WSD cool-down fraction",
    "warmup_steps": "the warmup (steps already past it are unaffected)",
    "weight_decay": "the decayed AdamW/Adam group's weight_decay",
    "beta1": "AdamW/Adam betas[0]",
    "beta2": "AdamW/Adam betas[1]",
    "eps": "AdamW/Adam eps",
    "muon_lr": "the Muon group's base_lr",
    "muon_momentum": "the Muon group's momentum",
    "grad_clip": "the gradient-norm clip of every following step",
    "eval_interval": "steps between validation passes",
    "eval_tokens": "validation tokens per periodic pass",
    "save_interval": "steps between extra checkpoints",
    "save_minutes": "minutes between extra checkpoints",
    "keep_last": "checkpoint copies kept",
    "hellaswag_items": "HellaSwag items scored at each validation pass",
    "hellaswag_file": "the HellaSwag file",
    "log_interval": "steps between metrics rows",
    "trackers": "the experiment trackers logged to",
}

# key -> why it cannot change
REFUSED: dict[str, str] = {
    "seed": "it decides the training windows (drawn and to come) and the dropout masks",
    "batch_size": "the loader's position counts batches of the saved size",
    "grad_accum": "it changes the batch the run was tuned and scheduled with",
    "batch_tokens": "it changes the batch the run was tuned and scheduled with",
    "seq_len": "the loader's windows have the saved length",
    "optimizer": "the saved optimizer state belongs to another optimizer",
    "decay_all": "it regroups the parameters of the saved optimizer state",
}


# data.* keys that decide the training tokens the loader's saved position points into (data.source_dir
# and data.workers only say where raw files are and how fast to tokenize them)
DATA_KEYS = ("source", "dir", "tokenizer", "val_fraction", "split", "split_seed", "max_tokens", "text_field",
             "errors", "sampling", "source_splits", "hf_split")


def check_resume(saved: RunConfig, cfg: RunConfig) -> None:
    """Refuse, in one line and before any work, a resume of the run saved as `saved` with `cfg`
    that changes the model or a `REFUSED` train.* key. Settles train.epochs against
    train.max_steps in `cfg`: a changed max_steps of a run sized in epochs drops the epochs."""
    for f in dataclasses.fields(saved.model):
        old, new = getattr(saved.model, f.name), getattr(cfg.model, f.name)
        if f.name == "vocab_size" and new in (0, old):
            continue
        if new != old:
            raise ConfigError(f"model.{f.name} cannot change when resuming ({old!r} -> {new!r}): the weights were "
                              "trained with the saved model; start a new run (another --out) to change it")
    if saved.data.sampling != cfg.data.sampling:
        raise ConfigError(f"data.sampling cannot change when resuming ({saved.data.sampling!r} -> "
                          f"{cfg.data.sampling!r}): the loader's saved position belongs to the saved sampler")
    for key in DATA_KEYS:
        old, new = getattr(saved.data, key), getattr(cfg.data, key)
        if new != old and not (key == "tokenizer" and saved.data.dir):  # a data dir brings its own tokenizer
            raise ConfigError(f"data.{key} cannot change when resuming ({old!r} -> {new!r}): the loader's saved "
                              "position points into the run's own training tokens; start a new run (another --out) "
                              "or fine-tune the run (`tinylm finetune`) to train on other data")
    for key, why in REFUSED.items():
        old, new = getattr(saved.train, key), getattr(cfg.train, key)
        if new != old:
            raise ConfigError(f"train.{key} cannot change when resuming ({old!r} -> {new!r}): {why}; start a new "
                              "run (another --out) to change it")
    t, s = cfg.train, saved.train
    if t.epochs != s.epochs and t.max_steps != s.max_steps and t.epochs:
        raise ConfigError("give train.max_steps or train.epochs when resuming, not both")
    if t.epochs and t.epochs == s.epochs and t.max_steps != s.max_steps:
        t.epochs = 0.0  # the run was sized in epochs and now in steps: the steps given decide


def apply_hyperparameters(optimizers: list[torch.optim.Optimizer], fresh: list[list[dict]]) -> None:
    """After `load_state_dict`, give every parameter group the hyperparameters of the group built
    from the resuming config (`fresh`: each optimizer's groups without their params, taken before
    loading): loading restores the saved lr, betas, eps, weight_decay, momentum and base_lr."""
    for optimizer, groups in zip(optimizers, fresh, strict=True):
        for group, new in zip(optimizer.param_groups, groups, strict=True):
            group.update(new)


def hyperparameters(optimizers: list[torch.optim.Optimizer]) -> list[list[dict]]:
    """Each optimizer's parameter groups without their parameters (for `apply_hyperparameters`)."""
    return [[{k: v for k, v in g.items() if k not in ("params", "param_names")} for g in o.param_groups]
            for o in optimizers]



def keep_batch(saved: RunConfig, saved_processes: int, cfg: RunConfig, processes: int) -> str | None:
    """Keep the tokens per optimizer step of a run saved by `saved_processes` processes when it resumes on
    `processes`: the step's sequences are shared anew (train.batch_tokens = the saved step's tokens, and
    train.batch_size = the largest micro-batch up to the saved one that divides each process's share), so
    the steps draw the same windows as before. Sets `cfg.train` in place and returns what changed, for a
    warning (None when the process count is the same); a step that the processes cannot share evenly is a
    one-line ConfigError."""
    if processes == saved_processes:
        return None
    t, seq_len = saved.train, saved.seq_len
    tokens = t.batch_tokens or t.batch_size * t.grad_accum * seq_len * saved_processes
    sequences = tokens // seq_len  # per step, over all processes
    if sequences % processes:
        fits = [n for n in range(1, min(sequences, 64) + 1) if sequences % n == 0]
        raise ConfigError(f"a step of this run is {sequences} sequences of {seq_len} tokens ({tokens:,} tokens, saved "
                          f"by {saved_processes} process(es)), which {processes} processes cannot share evenly; "
                          f"resume it on {', '.join(map(str, fits))} process(es)")
    share = sequences // processes
    micro = next((d for d in range(min(t.batch_size, share), 0, -1) if share % d == 0), 0)  # 0: automatic
    cfg.train.batch_tokens, cfg.train.grad_accum, cfg.train.batch_size = tokens, 1, micro
    split = f"{micro} x {share // micro} sequences" if micro else f"{share} sequences"
    dropout = cfg.model.dropout or (cfg.finetune.method == "lora" and cfg.lora.dropout)
    return (f"the run was saved by {saved_processes} process(es) and resumes on {processes}: each process now takes "
            f"{split} per step, so a step stays {tokens:,} tokens and draws the same windows (config.json records "
            f"train.batch_tokens={tokens}, train.batch_size={micro}, train.grad_accum=1)"
            + ("; dropout masks differ from an uninterrupted run" if dropout else ""))

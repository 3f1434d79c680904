"""`train(cfg)`: a run from its config, pre-training or fine-tuning: the trainer composed from outside.

    cfg ─► checks before any work (resume.check_resume, batch plan, memory, trackers)
        ─► rank 0 opens the data (prepared now if need be; a fine-tune's through training/finetune.py), the
           other processes the directory rank 0 broadcast
        ─► rank 0 claims the run directory (new: created, or replaced with --overwrite; resumed: locked)
        ─► build_model: GPT(cfg.model) from train.seed (a fine-tune: the base's weights, and LoRA with the
           rest frozen) and the run's weights format (run/weights.py)
        ─► (DPO: the objective and its reference model, training/dpo.py)
        ─► Trainer(cfg, run_dir, model, data, tokenizer, weights, objective) ─► restore (resume) ─► config.json,
           tokenizer ─► Trainer.fit ─► TrainResult

A new run that fails before its first checkpoint removes its directory. Under torchrun every process
calls `train`; only rank 0 changes files.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

import torch

from tinylm import fileio
from tinylm.config import RunConfig, absolute_paths, absolute_tokenizer_spec
from tinylm.console import console, warn
from tinylm.data.prepare import read_meta, resolve_data_dir
from tinylm.errors import CheckpointError, ConfigError, DataError, TinylmError
from tinylm.model import GPT
from tinylm.run.layout import RUN_FILES, STATE_FILE, read_config, write_config
from tinylm.run.weights import FULL, WeightsFormat, weights_format
from tinylm.runtime import check_memory, resolve_device, resolve_dtype
from tinylm.tokenizers import Tokenizer, load_tokenizer, spec_vocab_size
from tinylm.training import distributed, dpo, finetune
from tinylm.training.batch import plan_batch
from tinylm.training.checkpoint import saved_processes
from tinylm.training.data import WindowData
from tinylm.training.distributed import Procs
from tinylm.training.resume import check_resume, keep_batch
from tinylm.training.schedule import progress_fraction
from tinylm.training.trackers import check_trackers
from tinylm.training.trainer import Trainer, TrainResult


def _lock_run_dir(run_dir: Path, held: contextlib.ExitStack) -> None:
    """Take the run directory's lock for as long as `held` lasts (rank 0, for the whole run): one process
    trains in a run directory at a time, so no other resume, or --overwrite, changes its files meanwhile."""
    try:
        held.enter_context(fileio.exclusive(run_dir))
    except fileio.Busy:
        raise ConfigError(f"{run_dir} is in use: another tinylm process is training in it; wait for that process to "
                          "finish (Ctrl-C stops it with a checkpoint), then try again, or choose another --out"
                          ) from None


def _claim_run_dir(run_dir: Path, overwrite: bool, held: contextlib.ExitStack) -> None:
    """Create the run directory and take its lock (`_lock_run_dir`); with `overwrite`, first remove a
    previous run (also a half-deleted one), but never a directory holding files tinylm did not write."""
    entries = list(run_dir.iterdir()) if run_dir.is_dir() else []
    if entries:
        foreign = [p.name for p in entries if p.name not in RUN_FILES and not p.name.endswith(".tmp")]
        if foreign:
            raise ConfigError(f"{run_dir} is not a tinylm run directory (it holds {foreign[0]!r}); "
                              "choose another --out")
        if not overwrite:
            if (run_dir / STATE_FILE).is_file():
                raise ConfigError(f"{run_dir} already holds a run; continue it with `tinylm train --resume "
                                  f"{run_dir}`, choose another --out, or pass --overwrite to replace it")
            raise ConfigError(f"{run_dir} holds a run that never reached its first checkpoint (nothing to resume); "
                              "pass --overwrite to start it again there, or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    _lock_run_dir(run_dir, held)  # before anything is removed: a run still training there keeps its files
    for entry in run_dir.iterdir():  # the directory itself stays: its lock is held
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def default_run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.train.out_dir or Path("runs") / (cfg.preset or "run"))


def _summary(cfg: RunConfig, trainer: Trainer, resume: bool) -> str:
    m, t, tok, plan = cfg.model, cfg.train, trainer.tokenizer, trainer.plan
    ft = cfg.finetune
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    tuned = (f"\n  base    {ft.base} ({ft.base_weights}), {ft.method} fine-tuning: {trainable:,} trainable parameters"
             + (f" (LoRA r={cfg.lora.r}, alpha={cfg.lora.alpha:g} on {cfg.lora.targets})" if trainer.weights is not FULL
                else "")
             + (f"\n  dpo     {cfg.dpo.loss} loss, beta {cfg.dpo.beta:g}"
                + (f", label smoothing {cfg.dpo.label_smoothing:g}" if cfg.dpo.label_smoothing else "")
                + f", reference {trainer.objective.reference.what}" if trainer.objective else "")
             if ft.method else "")
    limits = (f"budget {t.time_budget:.0f}s or " if t.time_budget else "") + f"{t.max_steps} steps"
    procs = f" x {plan.processes} processes" if plan.processes > 1 else ""
    return "\n".join([
        f"[bold]tinylm[/] {'resuming' if resume else 'training'} {cfg.preset or 'run'} -> {trainer.run_dir}",
        f"  model   {trainer.model.num_params() / 1e6:.2f}M parameters ({m.n_layer} layers, {m.n_head} heads, "
        f"width {m.d_model}, context {m.context}, {m.pos} positions, {m.norm}, {m.mlp}), "
        f"{trainer.flops_per_token / 1e6:.1f} MFLOP/token{tuned}",
        f"  data    {trainer.data.describe()}, {tok.kind} tokenizer ({tok.vocab_size} ids)",
        f"  device  {trainer.device.type}{procs} {str(trainer.dtype).removeprefix('torch.')}, {t.optimizer}, "
        f"{trainer.tokens_per_step:,} tokens/step ({plan.micro} x {plan.accum} sequences{procs}), {limits}"
        + (f", from step {trainer.step}" if resume else ""),
    ])


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train a model as `cfg` describes (or continue the run in cfg.train.out_dir with `resume`).
    Under torchrun, every process calls this; rank 0 prepares data and writes the run directory."""
    cfg.validate()
    procs = distributed.from_environment()
    run_dir = default_run_dir(cfg)
    cfg.train.out_dir = str(run_dir)
    absolute_paths(cfg)  # config.json names the same files for commands run from any directory
    if resume:  # changes a resume cannot make fail before any work
        saved = absolute_paths(read_config(run_dir))
        check_resume(saved, cfg)
        if (note := keep_batch(saved, saved_processes(run_dir), cfg, procs.world_size)) and procs.main:
            warn(note)
    device = resolve_device(cfg.train.device)
    resolve_dtype(cfg.train.dtype, device)  # fail before any work
    if cfg.train.batch_size:
        plan_batch(cfg, procs.world_size)  # inconsistent batch settings fail before any work too
    check_fits(cfg, cfg.model.vocab_size or _known_vocab(cfg.data.tokenizer), device)  # so do impossible sizes
    check_trackers(cfg.train.trackers)
    try:
        result = _train(cfg, procs, run_dir, resume, overwrite)
    except BaseException:
        distributed.stop()  # no barrier: the other processes may never reach it
        raise
    distributed.stop(together=True)
    return result


def _known_vocab(spec: str) -> int:
    try:
        return spec_vocab_size(spec) or 1
    except TinylmError:  # a bad spec is reported where the data is prepared
        return 1


def check_fits(cfg: RunConfig, vocab: int, device: torch.device) -> None:
    """Refuse a model and micro-batch that certainly cannot fit in the device's memory: at least
    12 bytes per parameter (float32 weights, gradients and one optimizer moment) and 2 bytes per
    logit and per saved activation of one micro-batch (lower bounds, so nothing that fits is refused)."""
    params = cfg.model.min_params(vocab)
    micro = cfg.train.batch_size or 1
    tokens = micro * cfg.seq_len
    need = 12 * params + 2 * tokens * (vocab + cfg.model.d_model * cfg.model.n_layer)
    check_memory(need, device, f"a model of at least {params:,} parameters and a micro-batch of {micro} x "
                 f"{cfg.seq_len} tokens", "lower model.n_layer, model.d_model, model.context, the vocabulary "
                 "or train.batch_size")


def build_model(cfg: RunConfig) -> tuple[GPT, WeightsFormat]:
    """The model a run trains, from train.seed (the same initial weights in every process): a fine-tune's
    holds its base's weights (and, for LoRA, the adapter "default" with the rest frozen); and the weights
    format its checkpoints are written in."""
    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg.model)
    if cfg.finetune.method:
        finetune.start_from_base(model, cfg)
        return model, weights_format(cfg)
    return model, FULL


def _open_data(cfg: RunConfig, main: bool, data_dir: str | None = None) -> tuple[Any, Tokenizer]:
    """The training data and tokenizer: a data dir (prepared now if need be), or a fine-tune's data.
    `data_dir`: the directory rank 0 opened, which the other processes open as it is (they never prepare)."""
    if cfg.finetune.method:
        return finetune.open_finetune_data(cfg, quiet=not main, data_dir=data_dir)
    if data_dir is None:
        data_dir, prepared = resolve_data_dir(cfg.data)
        if prepared:
            console.print(f"prepared {cfg.data.source} into {data_dir}")
    cfg.data.tokenizer = absolute_tokenizer_spec(read_meta(data_dir)["tokenizer"]["spec"])  # a data dir brings its own
    return WindowData(data_dir), load_tokenizer(data_dir)


def _train(cfg: RunConfig, procs: Procs, run_dir: Path, resume: bool, overwrite: bool) -> TrainResult:
    if procs.main:  # one process prepares (and caches) the data; the others open the directory it opened
        data, tokenizer = _open_data(cfg, main=True)
    distributed.start(procs, resolve_device(cfg.train.device))  # join the process group
    data_dir = distributed.broadcast_object(procs, str(data.dir) if procs.main and isinstance(data, WindowData)
                                            else None)
    if not procs.main:
        data, tokenizer = _open_data(cfg, main=False, data_dir=data_dir)
    with contextlib.ExitStack() as held:  # rank 0 holds the run directory's lock until the run ends
        if resume:
            run_tokenizer = load_tokenizer(run_dir)
            if run_tokenizer.fingerprint() != tokenizer.fingerprint():
                raise DataError(f"the data of {run_dir} was tokenized differently from its run; "
                                "resume with the data the run was started on")
            if procs.main:
                _lock_run_dir(run_dir, held)
        elif procs.main:
            _claim_run_dir(run_dir, overwrite, held)
        return _run(cfg, procs, run_dir, data, tokenizer, resume)


def _run(cfg: RunConfig, procs: Procs, run_dir: Path, data: Any, tokenizer: Tokenizer, resume: bool) -> TrainResult:
    """Build the trainer in the claimed (or resumed) run directory, and train."""
    try:
        cfg.model.vocab_size = cfg.model.embedding_rows(tokenizer.vocab_size)
        check_fits(cfg, cfg.model.vocab_size, resolve_device(cfg.train.device))
        model, weights = build_model(cfg)
        objective = dpo.DPOObjective(cfg, model, data) if cfg.finetune.objective == "dpo" else None
        trainer = Trainer(cfg, run_dir, model, data, tokenizer, weights, procs, objective)
        if resume:
            trainer.restore()
            if trainer.step >= cfg.train.max_steps or progress_fraction(trainer.step, trainer.elapsed, cfg.train) >= 1:
                raise CheckpointError(f"{run_dir} already finished (step {trainer.step}, {trainer.elapsed:.0f}s); "
                                      "raise --max-steps or --time-budget to train it further")
        if procs.main:  # resumed: the settings given (see resume.py) are the run's from here on
            write_config(run_dir, cfg)
            if not resume:
                tokenizer.save(run_dir)
        distributed.barrier(procs)
        if procs.main:
            console.print(_summary(cfg, trainer, resume))
        return trainer.fit(resume)
    except BaseException:
        # a new run that fails before its first checkpoint leaves no half-made directory behind
        if not resume and procs.main and not (run_dir / STATE_FILE).is_file():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise

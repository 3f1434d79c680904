"""The training loop.

    data dir -> loader (random windows | permutation) -> [micro-batches x grad_accum -> AdamW step] x steps
                                   every eval_interval: validation loss, checkpoint, best weights, plots

The run ends at `max_steps` or when the wall-clock `time_budget` is spent, whichever comes
first; the learning rate follows that progress (see schedule.py). Ctrl-C stops at the next
step boundary with a checkpoint; `train(cfg, resume=True)` continues a run exactly where its
last checkpoint left it (same batches, same dropout masks, same weights on CPU).
"""

from __future__ import annotations

import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import TextColumn

from tinylm.config import RunConfig
from tinylm.console import console, progress, warn
from tinylm.data.loader import make_loader
from tinylm.data.prepare import load_split, read_meta, resolve_data_dir
from tinylm.errors import CheckpointError, ConfigError, DataError, TinylmError
from tinylm.evaluation.perplexity import score_tokens
from tinylm.model import GPT
from tinylm.rundir import BEST_FILE, METRICS_FILE, RUN_FILES, read_weights, save_weights, write_config
from tinylm.runtime import autocast, peak_flops, resolve_device, resolve_dtype
from tinylm.tokenizers import Tokenizer, load_tokenizer
from tinylm.training.checkpoint import load_checkpoint, save_checkpoint
from tinylm.training.metrics import MetricsLog, plot_metrics
from tinylm.training.optim import build_optimizer
from tinylm.training.schedule import learning_rate, progress_fraction


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    tokens: int
    elapsed: float
    val_loss: float | None
    best_val_loss: float | None
    stopped_by: str  # "max_steps", "time_budget" or "interrupt"


class StopRequest:
    """Turns the first Ctrl-C into a request honoured at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)  # a second Ctrl-C interrupts at once
        console.print("[yellow]stopping after this step (Ctrl-C again to abort without saving)")

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, data_dir: Path, tokenizer: Tokenizer):
        self.cfg, self.run_dir, self.tokenizer = cfg, run_dir, tokenizer
        t = cfg.train
        self.device = resolve_device(t.device)
        self.dtype = resolve_dtype(t.dtype, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(t.seed)
        self.model = GPT(cfg.model).to(self.device)
        self.optimizer = build_optimizer(self.model, t)
        # loss scaling only where it applies: float16 autocast on CUDA
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16 and self.device.type == "cuda")
        self.loader = make_loader(load_split(data_dir, "train"), cfg.model.context, t.batch_size, t.seed,
                                  sampling=cfg.data.sampling)
        self.val_tokens = load_split(data_dir, "val")
        self.tokens_per_step = t.batch_size * t.grad_accum * cfg.model.context
        self.flops_per_token = self.model.flops_per_token()
        self.peak_flops = peak_flops(self.device, self.dtype)  # for MFU; None where unknown (CPUs)
        self.forward = self._compiled() if t.compile else self.model
        self.metrics = MetricsLog(run_dir / METRICS_FILE)
        self.hellaswag = self._hellaswag_items() if t.hellaswag_items else []
        self.step, self.tokens, self.elapsed = 0, 0, 0.0
        self.best_val_loss = math.inf
        self.loss_sum, self.loss_count = 0.0, 0  # train loss since the last metrics row
        self._start = time.perf_counter()  # wall clock origin, shifted back by time already spent
        self._last_log = (self._start, 0)  # (time, tokens) at the last metrics row

    # ------------------------------------------------------------------ setup

    def _compiled(self) -> torch.nn.Module:
        """torch.compile the model, probing it once; fall back to eager with a warning."""
        try:
            compiled = torch.compile(self.model)
            x = torch.zeros(self.cfg.train.batch_size, self.cfg.model.context, dtype=torch.long, device=self.device)
            with autocast(self.device, self.dtype):
                _, loss = compiled(x, x)
            loss.backward()
            self.optimizer.zero_grad(set_to_none=True)
            return compiled
        except Exception as e:  # compilers fail in many ways (no C++ toolchain, unsupported op, ...)
            self.optimizer.zero_grad(set_to_none=True)
            warn(f"torch.compile is not usable here ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                 "training without it")
            return self.model

    def _hellaswag_items(self) -> list:
        from tinylm.evaluation.multiple_choice import hellaswag_file, read_items, subsample

        t = self.cfg.train
        return subsample(read_items(hellaswag_file(t.hellaswag_file), "hellaswag"), t.hellaswag_items, seed=0)

    def restore(self) -> None:
        state = load_checkpoint(self.run_dir, self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(state["loader"])
        self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed"]
        self.best_val_loss = state["best_val_loss"]
        self.loss_sum, self.loss_count = state["loss_sum"], state["loss_count"]
        if (self.run_dir / BEST_FILE).is_file():  # best weights may be newer than train_state.pt
            _, meta = read_weights(self.run_dir / BEST_FILE)
            self.best_val_loss = min(self.best_val_loss, float(meta.get("val_loss", math.inf)))
        self.metrics.truncate_after(self.step)

    # ------------------------------------------------------------------ the pieces of a step

    def train_step(self, lr: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = self.cfg.train
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for _ in range(t.grad_accum):
            x, y = (b.to(self.device, non_blocking=True) for b in self.loader.next_batch())
            with autocast(self.device, self.dtype):
                _, loss = self.forward(x, y)
            self.scaler.scale(loss / t.grad_accum).backward()
            total += loss.detach()
        grad_norm = None
        if t.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total / t.grad_accum, grad_norm

    def validation_loss(self) -> float:
        t = self.cfg.train
        max_windows = max(1, t.eval_tokens // self.cfg.model.context) if t.eval_tokens else 0
        nats, count = score_tokens(self.model, self.val_tokens, batch_size=t.batch_size,
                                   device=self.device, dtype=self.dtype, max_windows=max_windows)
        return nats / count

    def save(self, val_loss: float | None) -> None:
        meta = {"step": self.step, "tokenizer_fingerprint": self.tokenizer.fingerprint()}
        if val_loss is not None and val_loss < self.best_val_loss:
            self.best_val_loss = val_loss
            save_weights(self.model, self.run_dir / BEST_FILE, {**meta, "val_loss": val_loss})
        state = {"step": self.step, "tokens": self.tokens, "elapsed": self.elapsed,
                 "best_val_loss": self.best_val_loss, "loss_sum": self.loss_sum,
                 "loss_count": self.loss_count, "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "loader": self.loader.state_dict()}
        save_checkpoint(self.run_dir, self.model, state, meta)

    def plot(self) -> None:
        try:
            plot_metrics(self.metrics.rows(), self.run_dir, title=self.cfg.preset or self.run_dir.name)
        except Exception as e:  # a plot must never cost the run
            warn(f"could not draw the plots ({type(e).__name__}: {e})")

    # ------------------------------------------------------------------ the loop

    def stop_reason(self, stop: StopRequest) -> str | None:
        if self.step >= self.cfg.train.max_steps:
            return "max_steps"
        if progress_fraction(self.step, self.elapsed, self.cfg.train) >= 1.0:
            return "time_budget"
        return "interrupt" if stop.requested else None

    def log_train_row(self, lr: float, grad_norm: torch.Tensor | None) -> dict[str, Any]:
        now = time.perf_counter()
        last_time, last_tokens = self._last_log
        self._last_log = (now, self.tokens)
        row = {"step": self.step, "tokens": self.tokens, "elapsed": round(self.elapsed, 3), "lr": lr,
               "train_loss": self.loss_sum / self.loss_count,
               "grad_norm": None if grad_norm is None else float(grad_norm),
               "tokens_per_s": round((self.tokens - last_tokens) / max(now - last_time, 1e-9), 1)}
        row["tflops"] = round(row["tokens_per_s"] * self.flops_per_token / 1e12, 4)  # achieved training TFLOP/s
        if self.peak_flops:
            row["mfu"] = round(row["tflops"] * 1e12 / self.peak_flops, 4)
        self.loss_sum, self.loss_count = 0.0, 0
        self.metrics.append(row)
        return row

    def evaluate_and_save(self) -> float:
        val_loss = self.validation_loss()
        self.elapsed = time.perf_counter() - self._start
        row = {"step": self.step, "tokens": self.tokens, "elapsed": round(self.elapsed, 3),
               "val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 700.0))}
        extra = ""
        if self.hellaswag:
            from tinylm.evaluation.multiple_choice import score_items

            result = score_items(self.model, self.tokenizer, self.hellaswag, "hellaswag",
                                 batch_size=self.cfg.train.batch_size, device=self.device, dtype=self.dtype)
            row |= {"hellaswag_acc": result.accuracy, "hellaswag_acc_norm": result.accuracy_norm}
            extra = f"  hellaswag {result.accuracy_norm:.3f}"
        self.metrics.append(row)
        improved = val_loss < self.best_val_loss
        self.save(val_loss)
        self.plot()
        console.print(f"step {self.step:>6}  val loss {val_loss:.4f}  ppl {math.exp(val_loss):8.3f}{extra}"
                      f"  {self.elapsed:7.1f}s{'  (best)' if improved else ''}")
        return val_loss

    def fit(self) -> TrainResult:
        t = self.cfg.train
        self._start = time.perf_counter() - self.elapsed
        self._last_log = (time.perf_counter(), self.tokens)
        val_loss: float | None = None
        last_eval_step = self.step
        # fits an 80-column terminal; elapsed time is on the validation lines
        bar = progress(TextColumn("step {task.fields[step]}  loss {task.fields[loss]}  val {task.fields[val]}  "
                                  "{task.fields[tps]} tok/s"), counts=False, elapsed=False, bar_width=14)
        task = bar.add_task("train", total=1.0, step=self.step, loss="-", val="-", tps="-")
        self.model.train()
        with StopRequest() as stop, bar:
            while True:
                self.elapsed = time.perf_counter() - self._start
                if (stopped_by := self.stop_reason(stop)) is not None:
                    break
                lr = learning_rate(self.step, progress_fraction(self.step, self.elapsed, t), t)
                loss, grad_norm = self.train_step(lr)
                self.step += 1
                self.tokens += self.tokens_per_step
                self.loss_sum += loss.item()
                self.loss_count += 1
                self.elapsed = time.perf_counter() - self._start
                if not math.isfinite(self.loss_sum):
                    raise TinylmError(f"the training loss became {loss.item()} at step {self.step}; "
                                      "nothing was saved from this step on. Lower train.lr or raise "
                                      "train.warmup_steps and resume from the last checkpoint")
                if self.step % t.log_interval == 0:
                    row = self.log_train_row(lr, grad_norm)
                    bar.update(task, loss=f"{row['train_loss']:.3f}", tps=f"{row['tokens_per_s'] / 1000:.1f}k")
                if self.step % t.eval_interval == 0:
                    val_loss, last_eval_step = self.evaluate_and_save(), self.step
                    bar.update(task, val=f"{val_loss:.3f}")
                bar.update(task, step=self.step, completed=progress_fraction(self.step, self.elapsed, t))
            if stopped_by == "interrupt":
                if self.step != last_eval_step:  # checkpoint without spending time on validation
                    self.save(None)
                    self.plot()
            elif self.step != last_eval_step:
                val_loss = self.evaluate_and_save()
            bar.update(task, completed=progress_fraction(self.step, self.elapsed, t))
        best = self.best_val_loss if math.isfinite(self.best_val_loss) else None
        return TrainResult(self.run_dir, self.step, self.tokens, self.elapsed, val_loss, best, stopped_by)


# --------------------------------------------------------------------------- entry point


def _claim_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Create the run directory; with `overwrite`, first remove a previous run (also a half-deleted
    one), but never a directory holding files tinylm did not write."""
    entries = list(run_dir.iterdir()) if run_dir.is_dir() else []
    if entries:
        foreign = [p.name for p in entries if p.name not in RUN_FILES and not p.name.endswith(".tmp")]
        if foreign:
            raise ConfigError(f"{run_dir} is not a tinylm run directory (it holds {foreign[0]!r}); "
                              "choose another --out")
        if not overwrite:
            raise ConfigError(f"{run_dir} already holds a run; continue it with `tinylm train --resume "
                              f"{run_dir}`, choose another --out, or pass --overwrite to replace it")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def default_run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.train.out_dir or Path("runs") / (cfg.preset or "run"))


def _summary(cfg: RunConfig, trainer: Trainer, data_dir: Path, resume: bool) -> str:
    m, t, tok = cfg.model, cfg.train, trainer.tokenizer
    splits = read_meta(data_dir)["splits"]
    limits = (f"budget {t.time_budget:.0f}s or " if t.time_budget else "") + f"{t.max_steps} steps"
    return "\n".join([
        f"[bold]tinylm[/] {'resuming' if resume else 'training'} {cfg.preset or 'run'} -> {trainer.run_dir}",
        f"  model   {trainer.model.num_params() / 1e6:.2f}M parameters ({m.n_layer} layers, {m.n_head} heads, "
        f"width {m.d_model}, context {m.context}, {m.pos} positions, {m.norm}, {m.mlp}), "
        f"{trainer.model.flops_per_token() / 1e6:.1f} MFLOP/token",
        f"  data    {splits['train']['tokens']:,} train / {splits['val']['tokens']:,} val tokens, "
        f"{tok.kind} tokenizer ({tok.vocab_size} ids), {data_dir}",
        f"  device  {trainer.device.type} {str(trainer.dtype).removeprefix('torch.')}, "
        f"{trainer.tokens_per_step:,} tokens/step, {limits}" + (f", from step {trainer.step}" if resume else ""),
    ])


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train a model as `cfg` describes (or continue the run in cfg.train.out_dir with `resume`)."""
    cfg.validate()
    run_dir = default_run_dir(cfg)
    cfg.train.out_dir = str(run_dir)
    resolve_dtype(cfg.train.dtype, resolve_device(cfg.train.device))  # fail before any work
    data_dir, prepared = resolve_data_dir(cfg.data)
    if prepared:
        console.print(f"prepared {cfg.data.source} into {data_dir}")
    cfg.data.tokenizer = read_meta(data_dir)["tokenizer"]["spec"]  # a given data dir brings its own
    tokenizer = load_tokenizer(data_dir)
    if resume:
        run_tokenizer = load_tokenizer(run_dir)
        if run_tokenizer.fingerprint() != tokenizer.fingerprint():
            raise DataError(f"the data in {data_dir} was tokenized differently from the run in {run_dir}; "
                            "resume with the data the run was started on")
    else:
        _claim_run_dir(run_dir, overwrite)
    if cfg.model.vocab_size == 0:
        multiple = cfg.model.vocab_multiple
        cfg.model.vocab_size = -(-tokenizer.vocab_size // multiple) * multiple
    elif cfg.model.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size {cfg.model.vocab_size} is smaller than the tokenizer's "
                          f"vocabulary ({tokenizer.vocab_size}); set it to 0 to follow the tokenizer")
    trainer = Trainer(cfg, run_dir, data_dir, tokenizer)
    if resume:
        trainer.restore()
        if trainer.step >= cfg.train.max_steps or progress_fraction(trainer.step, trainer.elapsed, cfg.train) >= 1:
            raise CheckpointError(f"{run_dir} already finished (step {trainer.step}, {trainer.elapsed:.0f}s); "
                                  "raise --max-steps or --time-budget to train it further")
    else:
        write_config(run_dir, cfg)
        tokenizer.save(run_dir)
    console.print(_summary(cfg, trainer, data_dir, resume))
    return trainer.fit()

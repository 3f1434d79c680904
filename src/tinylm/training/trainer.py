"""The training loop, for pre-training and fine-tuning alike.

    data (training/data.py): WindowData | ExampleData ─► loader ─┐   (DPO: PairData, and the objective's
                                                                  │    loss: training/dpo.py)
    model (built by launch.py; a fine-tune's with base weights    ├─► [micro-batches x accumulation
           and, for LoRA, the adapter, the rest frozen)           │    -> optimizer step] x steps
    weights format (run/weights.py: every weight | the adapter) ──┘
                every eval_interval: validation loss, checkpoint, best weights, plots

The trainer receives its model, data and weights format (launch.py composes them): only trainable
parameters reach the optimizer, and checkpoints are written in the run's weights format (a LoRA run's
adapter alone).

The run ends at `max_steps` or when the wall-clock `time_budget` is spent, whichever comes
first; the learning rate follows that progress (see schedule.py). Ctrl-C (and a time budget spent
in the middle of a step of several micro-batches) stops at the next micro-batch, dropping the step in
progress, with a checkpoint of the last complete step; `train(cfg, resume=True)` continues a run exactly where its
last checkpoint left it (same batches, same dropout masks, same weights on CPU; on another number of
processes the same steps, shared anew: resume.keep_batch). Under torchrun each process trains on its slice
of every batch through DDP (distributed.py); only rank 0 changes files, holding the run directory's lock
for the whole run (one training per run directory).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from rich.progress import TextColumn
from torch.nn.parallel import DistributedDataParallel

from tinylm.config import RunConfig
from tinylm.config.fields import INT64_MAX
from tinylm.console import console, progress, warn
from tinylm.errors import CheckpointError, TinylmError, WriteError
from tinylm.model import GPT
from tinylm.run.layout import METRICS_FILE
from tinylm.run.weights import FULL, WeightsFormat, read_weights
from tinylm.runtime import autocast, memory_bytes, peak_flops, resolve_device, resolve_dtype
from tinylm.tokenizers import Tokenizer
from tinylm.training import distributed
from tinylm.training.batch import plan_batch
from tinylm.training.checkpoint import keep_copy, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from tinylm.training.data import WindowData
from tinylm.training.distributed import Procs
from tinylm.training.metrics import MetricsLog, plot_metrics
from tinylm.training.optim import build_optimizers, load_state
from tinylm.training.resume import apply_hyperparameters, hyperparameters
from tinylm.training.schedule import learning_rate, progress_fraction
from tinylm.training.trackers import open_trackers


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
    """Turns the first Ctrl-C into a request honoured at the next micro-batch (the step in progress,
    if it has more than one, is dropped: the last complete step is what gets saved); a second Ctrl-C
    raises KeyboardInterrupt at once, whatever SIGINT's handler was before (a job started in the
    background of a script inherits SIGINT ignored)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt  # the second Ctrl-C: abort without saving, as the first one said
        self.requested = True
        console.print("[yellow]stopping: the last complete step is saved (Ctrl-C again to abort without saving)")

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class StepDropped(Exception):
    """The step in progress was given up between two of its micro-batches (Ctrl-C, or the time budget
    spent): its gradients are discarded and the loader and RNG states rewound to the step's start, so
    the checkpoint saved next is exactly that of the last complete step."""


class Trainer:
    """The loop over optimizer steps of `model` on `data` (training/data.py: WindowData or ExampleData),
    checkpointing in `run_dir` in the weights format `weights` (run/weights.py: every weight, or a LoRA
    run's adapter alone). It receives what it trains: `launch.train` builds the model (a fine-tune's base
    weights and adapter included) and opens the data."""

    def __init__(self, cfg: RunConfig, run_dir: Path, model: GPT, data: Any, tokenizer: Tokenizer,
                 weights: WeightsFormat = FULL, procs: Procs | None = None, objective: Any = None):
        procs = procs or Procs()
        self.data, self.weights = data, weights
        # the loss of a micro-batch: the model's next-token loss, or an objective's (training/dpo.py:
        # objective.loss(forward, x, y), with train_metrics / validation_metrics for the metrics rows)
        self.objective = objective
        self.cfg, self.run_dir, self.tokenizer, self.procs = cfg, run_dir, tokenizer, procs
        t = cfg.train
        self.device = distributed.start(procs, resolve_device(t.device))
        if self.device.type == "cpu" and (t.threads or procs.distributed):
            torch.set_num_threads(distributed.cpu_threads(procs, t.threads))
        self.dtype = resolve_dtype(t.dtype, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.model = model.to(self.device)
        self.plan = plan_batch(cfg, procs.world_size, *((self._fits, self._most_micro())
                                                        if self.device.type == "cuda" else ()))
        if procs.distributed:
            torch.manual_seed(t.seed + 7919 * procs.rank)  # but different dropout masks
        self.optimizers = build_optimizers(self.model, t, self.device)
        # loss scaling only where it applies: float16 autocast on CUDA
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16 and self.device.type == "cuda")
        self.loader = self.data.loader(cfg.seq_len, self.plan.micro, t.seed, cfg.data.sampling,
                                       (procs.rank, procs.world_size))
        if t.epochs:  # resolved here, saved in config.json (at most int64: epochs may be huge)
            steps = t.epochs * self.data.steps_per_epoch(self.plan)
            t.max_steps = max(1, min(INT64_MAX, math.ceil(steps))) if math.isfinite(steps) else INT64_MAX
        self.tokens_per_step = self.plan.tokens
        self.flops_per_token = self.model.flops_per_token(cfg.seq_len)
        # for MFU (per process; None where unknown), in rank 0's metrics rows: only rank 0 measures and caches it
        self.peak_flops = peak_flops(self.device, self.dtype) if procs.main else None
        ddp_ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(self.model, device_ids=ddp_ids) if procs.distributed else self.model
        self.forward = self._compiled() if t.compile else self.ddp
        self.metrics = MetricsLog(run_dir / METRICS_FILE)
        self.trackers: list = []
        self.hellaswag = self._hellaswag_items() if t.hellaswag_items and procs.main else []
        self.step, self.tokens, self.elapsed = 0, 0, 0.0
        self.saved_step: int | None = None  # the step of the last checkpoint (None: none yet)
        self.best_val_loss = math.inf
        self.loss_sum, self.loss_count = 0.0, 0  # train loss since the last metrics row
        self.skipped_steps = 0  # float16 steps the GradScaler skipped (gradients overflowed)
        self._start = time.perf_counter()  # wall clock origin, shifted back by time already spent
        self._last_log = (self._start, 0)  # (time, tokens) at the last metrics row
        self._last_save = 0.0  # elapsed seconds at the last checkpoint

    # ------------------------------------------------------------------ setup

    def _trial_step(self, forward: Callable, micro: int) -> None:
        x = torch.zeros(micro, self.cfg.seq_len, dtype=torch.long, device=self.device)
        with autocast(self.device, self.dtype):
            _, loss = forward(x, x)
        loss.backward()
        self.model.zero_grad(set_to_none=True)

    def _most_micro(self) -> int:
        """The most sequences a micro-batch could hold in this device's memory: 2 bytes per logit and
        per saved activation of each token (`check_fits`' lower bound), so no batch that fits is skipped."""
        cfg = self.cfg
        per_sequence = 2 * cfg.seq_len * (cfg.model.vocab_size + cfg.model.d_model * cfg.model.n_layer)
        have = memory_bytes(self.device)
        return max(1, have // per_sequence) if have else 1 << 20

    def _fits(self, micro: int) -> bool:
        """Whether a forward and backward pass of `micro` sequences fits in GPU memory."""
        try:
            self._trial_step(self.model, micro)
            return True
        except torch.cuda.OutOfMemoryError:
            self.model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            return False

    def _compiled(self) -> torch.nn.Module:
        """torch.compile the model, probing it once; fall back to eager with a warning."""
        try:
            compiled = torch.compile(self.ddp)
            self._trial_step(compiled, self.plan.micro)
            return compiled
        except Exception as e:  # compilers fail in many ways (no C++ toolchain, unsupported op, ...)
            self.model.zero_grad(set_to_none=True)
            warn(f"torch.compile is not usable here ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                 "training without it")
            return self.ddp

    def _hellaswag_items(self) -> list:
        from tinylm.evaluation.multiple_choice import encode_items, hellaswag_file, read_items, subsample

        t = self.cfg.train
        items = subsample(read_items(hellaswag_file(t.hellaswag_file), "hellaswag"), t.hellaswag_items, seed=0)
        encode_items(self.tokenizer, items)  # an item that cannot be scored fails now
        return items

    def restore(self) -> None:
        procs = self.procs
        if not procs.main:
            distributed.barrier(procs)  # rank 0 repairs an interrupted save first
        state = load_checkpoint(self.run_dir, self.model, rank=procs.rank, weights=self.weights, repair=procs.main)
        if procs.main:
            distributed.barrier(procs)
        self._check_same_steps(state)
        saved_optimizers = state["optimizers"] if "optimizers" in state else [state["optimizer"]]  # format of 0.x
        if len(saved_optimizers) != len(self.optimizers):
            raise CheckpointError(f"{self.run_dir} was trained with another train.optimizer; resume with the "
                                  "run's own optimizer")
        fresh = hyperparameters(self.optimizers)  # from the resuming config
        for optimizer, saved in zip(self.optimizers, saved_optimizers, strict=True):
            load_state(optimizer, saved)
        apply_hyperparameters(self.optimizers, fresh)  # the settings given take effect, not the saved ones
        if self.scaler.is_enabled() and state["scaler"]:  # a run resumed in float16 from another dtype starts afresh
            self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(state["loader"])
        self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed"]
        self.saved_step = self.step
        self.best_val_loss = state["best_val_loss"]
        self.loss_sum, self.loss_count = state["loss_sum"], state["loss_count"]
        self.skipped_steps = state.get("skipped_steps", 0)
        self._last_save = self.elapsed
        best = self.run_dir / self.weights.best
        if best.is_file():  # best weights may be newer than train_state.pt
            _, meta = read_weights(best)
            self.best_val_loss = min(self.best_val_loss, float(meta.get("val_loss", math.inf)))
        if procs.main:
            self.metrics.truncate_after(self.step)

    def batch_record(self) -> dict[str, int]:
        """What a checkpoint records of the batch: the tokens of a step and how they were shared."""
        plan = self.plan
        return {"tokens": plan.tokens, "seq_len": plan.context, "processes": plan.processes, "micro": plan.micro,
                "accum": plan.accum}

    def data_record(self) -> dict[str, Any]:
        """What a checkpoint records of the training data (prepared windows: their tokens and source checksum)."""
        if not isinstance(self.data, WindowData):
            return {}
        return {"train_tokens": len(self.data.train), "source_sha256": self.data.source_sha256}

    def _check_same_steps(self, state: dict[str, Any]) -> None:
        """A resumed run takes steps of the saved tokens and length, on the saved training tokens (the
        loader's position counts them): the routes resume.py does not see (a Trainer built by hand, a data
        directory or source changed since the checkpoint) are one-line errors too."""
        saved, now = state.get("batch"), self.batch_record()
        if saved and (saved["tokens"], saved["seq_len"]) != (now["tokens"], now["seq_len"]):
            raise CheckpointError(f"{self.run_dir} takes steps of {saved['tokens']:,} tokens in windows of "
                                  f"{saved['seq_len']}, this resume {now['tokens']:,} in windows of {now['seq_len']}; "
                                  "resume with the run's own batch settings (its config.json)")
        saved_data, data = state.get("data"), self.data_record()
        if saved_data and data and saved_data != data:
            what = ("its source changed" if saved_data["source_sha256"] != data["source_sha256"]
                    else "it was prepared anew")
            raise CheckpointError(f"the training data of {self.run_dir} is not the data of its checkpoint ({what}: "
                                  f"{saved_data['train_tokens']:,} training tokens then, {data['train_tokens']:,} now, "
                                  f"in {self.data.dir}); the loader's position points into the saved tokens, so "
                                  "restore that data, or train on the new data in a new run (another --out) or "
                                  "a fine-tune of this one")

    # ------------------------------------------------------------------ the pieces of a step

    def train_step(self, lr_factor: float, stop: Callable[[], bool] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step at `lr_factor` x each group's base rate; returns this process's mean
        loss and the global gradient norm (before clipping). With several micro-batches, `stop()` is
        asked between them (on every process at once): True drops the step (StepDropped), so that a
        step of a huge batch neither outlasts the time budget nor ignores Ctrl-C."""
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * lr_factor
        if stop is None or self.plan.accum == 1:
            mean_loss = self.backward()
        else:
            start = (self.loader.state_dict(), rng_state())
            try:
                mean_loss = self.backward(stop)
            except StepDropped:
                self.model.zero_grad(set_to_none=True)
                self.loader.load_state_dict(start[0])
                set_rng_state(start[1])
                raise
        return mean_loss, self.optimizer_step(mean_loss)

    def backward(self, stop: Callable[[], bool] | None = None) -> torch.Tensor:
        """Gradients of one global batch (averaged over the processes); returns this process's mean loss.
        `stop()`, when given, is asked before every micro-batch but the first: True raises StepDropped."""
        accum = self.plan.accum
        total = torch.zeros((), device=self.device)
        for i in range(accum):
            if i and stop is not None and stop():
                raise StepDropped
            x, y = (b.to(self.device, non_blocking=True) for b in self.loader.next_batch())
            # DDP averages gradients across processes on the last micro-batch only
            last = i == accum - 1 or not self.procs.distributed
            with contextlib.nullcontext() if last else self.ddp.no_sync():
                with autocast(self.device, self.dtype):
                    loss = self.objective.loss(self.forward, x, y) if self.objective else self.forward(x, y)[1]
                self.scaler.scale(loss / accum).backward()
            total += loss.detach()
        return total / accum

    def optimizer_step(self, mean_loss: torch.Tensor) -> torch.Tensor:
        """Clip, check and apply the gradients; returns their norm before clipping. A non-finite loss
        (or non-finite gradients outside float16) stops the run before the weights change."""
        for optimizer in self.optimizers:
            self.scaler.unscale_(optimizer)
        clip = self.cfg.train.grad_clip or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if not torch.isfinite(mean_loss):
            raise TinylmError(f"the training loss became {mean_loss.item()} at step {self.step + 1}; "
                              + self.divergence_advice())
        if self.scaler.is_enabled():  # float16: an overflowing step is skipped and the loss scale lowered
            scale = self.scaler.get_scale()
            for optimizer in self.optimizers:
                self.scaler.step(optimizer)
            self.scaler.update()
            if self.scaler.get_scale() < scale:
                self.skipped_steps += 1
                if self.procs.main and self.skipped_steps <= 20:
                    console.print(f"step {self.step + 1}: float16 gradients overflowed; step skipped, loss scale "
                                  f"now {self.scaler.get_scale():g}" + (" (further skips: metrics.jsonl)"
                                                                       if self.skipped_steps == 20 else ""))
        elif not torch.isfinite(grad_norm):
            raise TinylmError(f"the gradients became {grad_norm.item()} at step {self.step + 1} (loss "
                              f"{mean_loss.item():.4f}); " + self.divergence_advice())
        else:
            for optimizer in self.optimizers:
                optimizer.step()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def divergence_advice(self) -> str:
        """What to do after the run diverged: a command that works from where the run directory is
        left (resume from the last checkpoint at a lower learning rate, or, when there is none
        and the directory is removed, run again with one)."""
        lower = f"{self.cfg.train.lr / 10:g}"
        if self.saved_step is None:
            return ("the run had no checkpoint yet, so nothing was kept; run the same command again with a lower "
                    f"learning rate (--lr {lower}) or a longer warmup (--set train.warmup_steps=N)")
        return (f"nothing was saved after step {self.saved_step}. Continue from that checkpoint with a lower learning "
                f"rate: tinylm train --resume {self.run_dir} --lr {lower} (or a longer warmup: "
                "--set train.warmup_steps=N)")

    def write_advice(self) -> str:
        """How to go on after a file of the run could not be written (the fix comes first): run the same
        command again when there was no checkpoint yet (the half-made directory is removed), else resume
        from the last checkpoint."""
        if self.saved_step is None:
            return "run the same command again (the run had no checkpoint yet; nothing was kept)"
        verb = "finetune" if self.cfg.finetune.method else "train"
        return (f"continue from the checkpoint of step {self.saved_step}: tinylm {verb} --resume {self.run_dir}")

    def check_finite_weights(self) -> None:
        """A checkpoint never holds NaN or infinite weights (a step at an extreme learning rate or
        weight decay can make them from finite gradients)."""
        bad = next((name for name, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())), None)
        if bad is not None:
            raise TinylmError(f"the weights became non-finite ({bad}) at step {self.step}; " + self.divergence_advice())

    def validation_loss(self) -> float:
        """Mean loss over the validation windows (response tokens of the validation examples when
        fine-tuning on instructions or chats), each process scoring its share."""
        nats, count = self.data.validation(self.model, seq_len=self.cfg.seq_len, batch_size=self.plan.micro,
                                           device=self.device, dtype=self.dtype, max_tokens=self.cfg.train.eval_tokens,
                                           shard=(self.procs.rank, self.procs.world_size))
        nats, count = distributed.all_sum(self.procs, [nats, count], self.device)
        return nats / max(count, 1)

    def step_tokens(self) -> int:
        """Tokens of the global batches of the step just taken (padding not counted for examples)."""
        take = getattr(self.loader, "take_tokens", None)
        return take() if take is not None else self.tokens_per_step

    def save(self, val_loss: float | None) -> None:
        """Checkpoint (every process takes part: RNG states are gathered; rank 0 writes)."""
        self.check_finite_weights()
        rngs = distributed.gather_objects(self.procs, rng_state())
        self._last_save = self.elapsed
        if not self.procs.main:
            self.saved_step = self.step
            return
        meta = {"step": self.step, "tokenizer_fingerprint": self.tokenizer.fingerprint()}
        if val_loss is not None and val_loss < self.best_val_loss:
            self.best_val_loss = val_loss
            self.weights.save(self.model, self.run_dir / self.weights.best, {**meta, "val_loss": val_loss})
        state = {"step": self.step, "tokens": self.tokens, "elapsed": self.elapsed,
                 "best_val_loss": self.best_val_loss, "loss_sum": self.loss_sum, "loss_count": self.loss_count,
                 "skipped_steps": self.skipped_steps, "optimizers": [o.state_dict() for o in self.optimizers],
                 "scaler": self.scaler.state_dict(), "loader": self.loader.state_dict(),
                 "batch": self.batch_record(), "data": self.data_record(),
                 "rng": rngs if self.procs.distributed else rngs[0]}
        save_checkpoint(self.run_dir, self.model, state, meta, weights=self.weights)
        self.saved_step = self.step  # once committed: after a failed save the last good checkpoint is named
        if self.cfg.train.keep_last:
            keep_copy(self.run_dir, self.step, self.cfg.train.keep_last, self.weights.latest)

    def plot(self) -> None:
        if not self.procs.main:
            return
        try:
            plot_metrics(self.metrics.rows(), self.run_dir, title=self.cfg.preset or self.run_dir.name)
        except Exception as e:  # a plot must never cost the run
            warn(f"could not draw the plots ({type(e).__name__}: {e})")

    def record(self, row: dict[str, Any]) -> None:
        """A metrics row: metrics.jsonl and the trackers (rank 0 only)."""
        if self.procs.main:
            self.metrics.append(row)
            for tracker in self.trackers:
                tracker.log(row)

    # ------------------------------------------------------------------ the loop

    def stop_reason(self, stop_requested: bool) -> str | None:
        if self.step >= self.cfg.train.max_steps:
            return "max_steps"
        if progress_fraction(self.step, self.elapsed, self.cfg.train) >= 1.0:
            return "time_budget"
        return "interrupt" if stop_requested else None

    def stop_mid_step(self, stop: StopRequest) -> bool:
        """Whether to drop the step in progress: Ctrl-C, or the time budget spent (rank 0's clock and
        Ctrl-C on every process: the same answer everywhere)."""
        elapsed, requested = distributed.sync_clock(self.procs, time.perf_counter() - self._start, stop.requested,
                                                    self.device)
        return requested or bool(self.cfg.train.time_budget and elapsed >= self.cfg.train.time_budget)

    def save_due(self) -> bool:
        """A periodic checkpoint between validation passes (train.save_interval / save_minutes)."""
        t = self.cfg.train
        return bool((t.save_interval and self.step % t.save_interval == 0)
                    or (t.save_minutes and self.elapsed - self._last_save >= 60 * t.save_minutes))

    def log_train_row(self, lr: float, grad_norm: torch.Tensor) -> dict[str, Any]:
        now = time.perf_counter()
        last_time, last_tokens = self._last_log
        self._last_log = (now, self.tokens)
        loss_sum, processes = distributed.all_sum(self.procs, [self.loss_sum, 1.0], self.device)
        row = {"step": self.step, "tokens": self.tokens, "elapsed": round(self.elapsed, 3), "lr": lr,
               "train_loss": loss_sum / processes / self.loss_count, "grad_norm": float(grad_norm),
               "tokens_per_s": round((self.tokens - last_tokens) / max(now - last_time, 1e-9), 1)}
        row["tflops"] = round(row["tokens_per_s"] * self.flops_per_token / 1e12, 4)  # achieved training TFLOP/s
        if self.peak_flops:  # model FLOPs utilisation against every process's peak
            row["mfu"] = round(row["tflops"] * 1e12 / (self.peak_flops * self.procs.world_size), 4)
        if self.scaler.is_enabled():
            row["skipped_steps"] = self.skipped_steps
        if self.procs.distributed:
            row["processes"] = int(processes)  # that reported this row
        if self.objective:
            row |= self.objective.train_metrics(self.procs, self.device)
        self.loss_sum, self.loss_count = 0.0, 0
        self.record(row)
        return row

    def evaluate_and_save(self) -> float:
        val_loss = self.validation_loss()
        if not math.isfinite(val_loss):  # finite weights can still overflow the forward (e.g. weight decay 1e30)
            raise TinylmError(f"the validation loss became {val_loss} at step {self.step} (the weights no longer "
                              "give finite logits); nothing of this step was saved; " + self.divergence_advice())
        self.elapsed = time.perf_counter() - self._start
        row = {"step": self.step, "tokens": self.tokens, "elapsed": round(self.elapsed, 3),
               "val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 700.0))}
        extra = ""
        if self.hellaswag:  # rank 0 only: the others wait at the next step's synchronisation
            from tinylm.evaluation.multiple_choice import score_items

            result = score_items(self.model, self.tokenizer, self.hellaswag, "hellaswag",
                                 batch_size=self.plan.micro, device=self.device, dtype=self.dtype)
            row |= {"hellaswag_acc": result.accuracy, "hellaswag_acc_norm": result.accuracy_norm}
            extra = f"  hellaswag {result.accuracy_norm:.3f}"
        if self.objective:
            metrics = self.objective.validation_metrics(self.procs, self.device)
            row |= metrics
            if "eval_rewards/accuracies" in metrics:
                extra += (f"  pref acc {metrics['eval_rewards/accuracies']:.3f}  margin "
                          f"{metrics['eval_rewards/margins']:.3f}")
        self.record(row)
        improved = val_loss < self.best_val_loss
        self.save(val_loss)
        self.plot()
        if self.procs.main:
            console.print(f"step {self.step:>6}  val loss {val_loss:.4f}  ppl {math.exp(min(val_loss, 700)):8.3f}"
                          f"{extra}  {self.elapsed:7.1f}s{'  (best)' if improved else ''}")
        return val_loss

    def fit(self, resume: bool = False) -> TrainResult:
        t, procs = self.cfg.train, self.procs
        if procs.main:
            self.trackers = open_trackers(t.trackers, self.run_dir, self.cfg.to_dict(),
                                          self.cfg.preset or self.run_dir.name, resume,
                                          start_step=self.step if resume else None)
        self._start = time.perf_counter() - self.elapsed
        self._last_log = (time.perf_counter(), self.tokens)
        val_loss: float | None = None
        last_eval_step = last_save_step = self.step
        # fits an 80-column terminal; elapsed time is on the validation lines
        bar = progress(TextColumn("step {task.fields[step]}  loss {task.fields[loss]}  val {task.fields[val]}  "
                                  "{task.fields[tps]} tok/s"), counts=False, elapsed=False, bar_width=14)
        bar.disable = bar.disable or not procs.main
        task = bar.add_task("train", total=1.0, step=self.step, loss="-", val="-", tps="-")
        self.model.train()
        try:
            with StopRequest() as stop, bar:
                while True:
                    # every process follows rank 0's clock and Ctrl-C
                    self.elapsed, stop_requested = distributed.sync_clock(
                        procs, time.perf_counter() - self._start, stop.requested, self.device)
                    if (stopped_by := self.stop_reason(stop_requested)) is not None:
                        break
                    lr = learning_rate(self.step, progress_fraction(self.step, self.elapsed, t), t)
                    try:
                        loss, grad_norm = self.train_step(lr / t.lr, lambda: self.stop_mid_step(stop))
                    except StepDropped:
                        stopped_by = "interrupt" if stop.requested or not t.time_budget else "time_budget"
                        break
                    self.step += 1
                    self.tokens += self.step_tokens()
                    self.loss_sum += loss.item()
                    self.loss_count += 1
                    self.elapsed = time.perf_counter() - self._start
                    if self.step % t.log_interval == 0:
                        row = self.log_train_row(lr, grad_norm)
                        bar.update(task, loss=f"{row['train_loss']:.3f}", tps=f"{row['tokens_per_s'] / 1000:.1f}k")
                    if self.step % t.eval_interval == 0:
                        val_loss, last_eval_step = self.evaluate_and_save(), self.step
                        last_save_step = self.step
                        bar.update(task, val=f"{val_loss:.3f}")
                    elif self.save_due():
                        self.save(None)
                        last_save_step = self.step
                    bar.update(task, step=self.step, completed=progress_fraction(self.step, self.elapsed, t))
                if stopped_by == "interrupt":
                    # checkpoint without spending time on validation (always one, so --resume works)
                    if self.step != last_save_step or self.saved_step is None:
                        self.save(None)
                        self.plot()
                elif self.step != last_eval_step or self.saved_step is None:
                    val_loss = self.evaluate_and_save()
                bar.update(task, completed=progress_fraction(self.step, self.elapsed, t))
        except WriteError as e:  # a full disk, ...: its fix, then how to go on from the last checkpoint
            raise e.then(self.write_advice()) from e
        finally:
            for tracker in self.trackers:
                tracker.close()
        best = self.best_val_loss if math.isfinite(self.best_val_loss) else None
        return TrainResult(self.run_dir, self.step, self.tokens, self.elapsed, val_loss, best, stopped_by)

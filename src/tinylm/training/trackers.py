"""Optional experiment trackers (TensorBoard, Weights & Biases) fed with the metrics.jsonl rows.

Off by default: `open_trackers("", ...)` returns no trackers. The packages are imported only
when a tracker is opened, so tinylm works without them; a missing one is a `ConfigError` naming
the pip extra. Each row is logged at `row["step"]`; every other numeric field becomes a scalar
under a grouped tag (see `tag_for`), and None or non-numeric values are skipped.

A tracker that fails while logging never stops training: it warns once and turns itself off.
"""

from __future__ import annotations

import json
import numbers
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable, Protocol

from tinylm import fileio
from tinylm.console import warn
from tinylm.errors import ConfigError

WANDB_ID_FILE = "wandb_id.txt"
TENSORBOARD_DIR = "tensorboard"

# metrics.jsonl key -> scalar tag; keys not listed fall back to `tag_for`'s prefix rules.
TAGS: dict[str, str] = {
    "train_loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "val_loss": "val/loss",
    "val_perplexity": "val/perplexity",
    "tokens_per_s": "perf/tokens_per_s",
    "tflops": "perf/tflops",
    "mfu": "perf/mfu",
    "hellaswag_acc": "eval/hellaswag_acc",
    "tokens": "progress/tokens",
    "elapsed": "progress/elapsed_s",
}


class Tracker(Protocol):
    def log(self, row: dict[str, Any]) -> None: ...  # row has "step"; every other numeric field is logged

    def close(self) -> None: ...


def tag_for(key: str) -> str:
    """The scalar tag for a metrics key: `TAGS`, then train_x -> train/x, val_x -> val/x, else other/key."""
    if key in TAGS:
        return TAGS[key]
    for prefix in ("train", "val"):
        if key.startswith(prefix + "_") and len(key) > len(prefix) + 1:
            return f"{prefix}/{key[len(prefix) + 1:]}"
    return f"other/{key}"


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """{tag: value} for every numeric field of `row` except "step" (None, bools and text skipped)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        out[tag_for(str(key))] = float(value)
    return out


def _step(row: dict[str, Any]) -> int | None:
    """row["step"] as an int; None (the row is not logged) when it is missing or not a whole number."""
    step = row.get("step")
    if isinstance(step, numbers.Integral) and not isinstance(step, bool):
        return int(step)
    if isinstance(step, float) and step.is_integer():
        return int(step)
    return None


class TensorBoardTracker:
    def __init__(self, run_dir: Path, config: dict[str, Any], resume: bool, start_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events past the checkpoint a resumed run restarts from (as metrics.jsonl does)
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR),
                                    purge_step=start_step + 1 if resume and start_step is not None else None)
        if not resume:
            text = json.dumps(config, indent=2, sort_keys=True, default=str)
            self.writer.add_text("config", f"```json\n{text}\n```", global_step=0)

    def log(self, row: dict[str, Any]) -> None:
        step = _step(row)
        if step is None:
            return
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def wandb_run_id(run_dir: Path, resume: bool) -> str:
    """The W&B run id kept in run_dir/wandb_id.txt: reused when resuming, a fresh one otherwise."""
    path = run_dir / WANDB_ID_FILE
    if resume and path.is_file():
        run_id = path.read_text(encoding="utf-8").strip()
        if run_id:
            return run_id
    run_id = secrets.token_hex(8)
    fileio.write_text(path, run_id + "\n")
    return run_id


class WandbTracker:
    def __init__(self, run_dir: Path, config: dict[str, Any], run_name: str, resume: bool):
        import wandb

        run_id = wandb_run_id(run_dir, resume)
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "tinylm"), name=run_name, config=config,
                                  dir=str(run_dir), id=run_id, resume="allow")
        except Exception as exc:  # not logged in, no network, bad settings: say so on one line
            raise ConfigError(f"train.trackers includes 'wandb' but wandb.init failed ({_one_line(exc)}); "
                              "run `wandb login`, or set WANDB_MODE=offline") from exc

    def log(self, row: dict[str, Any]) -> None:
        step = _step(row)
        if step is None:
            return
        values = scalars(row)
        if values:
            self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class _Guarded:
    """Wraps a tracker so that an exception while logging warns once and disables it."""

    def __init__(self, name: str, tracker: Tracker):
        self.name = name
        self.tracker = tracker
        self.disabled = False
        self.closed = False

    def log(self, row: dict[str, Any]) -> None:
        if self.disabled or self.closed:
            return
        try:
            self.tracker.log(row)
        except Exception as exc:
            self.disabled = True
            warn(f"{self.name} tracker failed at step {row.get('step')} ({_one_line(exc)}); "
                 f"{self.name} logging is off for the rest of this run (metrics.jsonl is unaffected)")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.tracker.close()
        except Exception as exc:
            if not self.disabled:  # a tracker that already failed has had its one warning
                warn(f"{self.name} tracker failed while closing ({_one_line(exc)})")
            self.disabled = True

    def __repr__(self) -> str:
        return f"<tracker {self.name}{' (disabled)' if self.disabled else ''}>"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _require(name: str, module: str) -> None:
    """Import `module` or raise a ConfigError naming the pip extra."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        hint = f"pip install 'tinylm[{name}]'"
        missing = isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == module.split(".")[0]
        if missing:
            raise ConfigError(f"train.trackers includes '{name}' but the {name} package is not installed; "
                              f"{hint}") from None
        raise ConfigError(f"train.trackers includes '{name}' but the {name} package failed to import "
                          f"({_one_line(exc)}); {hint}") from None


def _open_tensorboard(run_dir: Path, config: dict[str, Any], run_name: str, resume: bool,
                      start_step: int | None) -> Tracker:
    try:
        return TensorBoardTracker(run_dir, config, resume, start_step)
    except ImportError as exc:  # torch.utils.tensorboard rejects a too-old tensorboard
        raise ConfigError(f"train.trackers includes 'tensorboard' but it cannot be used ({_one_line(exc)}); "
                          "pip install 'tinylm[tensorboard]'") from None


def _open_wandb(run_dir: Path, config: dict[str, Any], run_name: str, resume: bool,
                start_step: int | None) -> Tracker:
    return WandbTracker(run_dir, config, run_name, resume)


OPENERS: dict[str, Callable[[Path, dict[str, Any], str, bool, int | None], Tracker]] = {
    "tensorboard": _open_tensorboard,
    "wandb": _open_wandb,
}


def parse_tracker_names(names: str | Iterable[str]) -> list[str]:
    """ "tensorboard,wandb" (or a list) -> known names in order, duplicates dropped; "" -> []."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out: list[str] = []
    for item in items:
        name = str(item).strip().lower()
        if not name:
            continue
        if name not in OPENERS:
            raise ConfigError(f"train.trackers: unknown tracker {str(item).strip()!r}; "
                              f"known: {', '.join(OPENERS)} (comma-separated, or empty for none)")
        if name not in out:
            out.append(name)
    return out


def check_trackers(names: str | Iterable[str]) -> list[str]:
    """The known tracker names in `names`; a ConfigError for an unknown name or a missing package."""
    wanted = parse_tracker_names(names)
    for name in wanted:
        _require(name, name)
    return wanted


def open_trackers(names: str | Iterable[str], run_dir: Path, config: dict[str, Any], run_name: str, resume: bool, *,
                  start_step: int | None = None) -> list[Tracker]:
    """names: "" (none) or a comma-separated list of "tensorboard" and/or "wandb".

    Raises ConfigError for an unknown name or a missing package, before anything is opened.
    `start_step` (optional): the step a resumed run restarts from; TensorBoard then drops the
    events logged after it by the interrupted run. The returned trackers never raise from `log`.
    """
    wanted = check_trackers(names)  # fail on every missing package before opening (and creating) anything
    if wanted:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    opened: list[Tracker] = []
    try:
        for name in wanted:
            opened.append(_Guarded(name, OPENERS[name](run_dir, config, run_name, resume, start_step)))
    except BaseException:
        for tracker in opened:
            tracker.close()
        raise
    return opened

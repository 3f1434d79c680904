"""Resumable checkpoints: model.safetensors + train_state.pt, committed together.

A checkpoint is two files that must agree (a LoRA run's weights file is adapter.safetensors: only the
adapter is saved, the frozen base stays in the base run). Saving writes both to temporary names, then
renames train_state.pt (the commit point: it records the sha256 of the new weights), then
model.safetensors. A SIGKILL before the commit leaves the previous checkpoint intact; after
it, `load_checkpoint` finds the new weights under their temporary name by their sha256 and
finishes the rename (only the process that writes the run directory does: rank 0, before the others
load). train_state.pt holds only tensors and plain Python values and is read
with `torch.load(weights_only=True)`, so loading never unpickles arbitrary objects. It also records the
batch of a step (tokens, window, processes) and the training data (tokens, source sha256) it was saved
with, which a resume must match.

With `train.keep_last`, each checkpoint is also kept (hard-linked, so no copy of the bytes) in
checkpoints/step-NNNNNNN/ and the oldest beyond the last K are removed.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinylm import fileio
from tinylm.errors import CheckpointError
from tinylm.model import GPT
from tinylm.run.layout import CHECKPOINTS_DIR, MODEL_FILE, STATE_FILE
from tinylm.run.weights import FULL, WeightsFormat

FORMAT = 1


def rng_state() -> dict[str, Any]:
    """Every global generator: torch (CPU, CUDA, MPS), Python's `random` and NumPy's, as tensors
    and plain values (readable with weights_only=True)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {"torch": torch.get_rng_state(),
                             "python": [version, list(mt), gauss],
                             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "python" in state:
        version, mt, gauss = state["python"]
        random.setstate((version, tuple(mt), gauss))
    if "numpy" in state:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


def save_checkpoint(run_dir: Path, model: GPT, state: dict[str, Any], metadata: dict[str, Any],
                    weights: WeightsFormat = FULL) -> None:
    """Atomically replace the run's checkpoint with `model`'s weights in the run's format (`weights`: a
    LoRA run's adapter alone) and `state` (optimizer, loader, counters; this process's RNG states are
    added here unless `state` brings them)."""
    model_path, state_path = run_dir / weights.latest, run_dir / STATE_FILE
    sha = weights.save(model, model_path, metadata, replace=False)
    full = {"format": FORMAT, "model_sha256": sha, "rng": rng_state(), **state}
    try:
        with fileio.atomic_write(state_path) as f:  # the commit point
            torch.save(full, f)
    except BaseException:  # not committed: the previous checkpoint stands, and the new weights are no use
        fileio.temp_path(model_path).unlink(missing_ok=True)
        raise
    fileio.commit(fileio.temp_path(model_path), model_path)


def _repair(run_dir: Path, expected_sha: str, name: str = MODEL_FILE) -> None:
    """Make model.safetensors (or the adapter) the weights train_state.pt was saved with, or fail clearly."""
    model_path = run_dir / name
    if model_path.is_file() and fileio.sha256_file(model_path) == expected_sha:
        return
    pending = fileio.temp_path(model_path)
    if pending.is_file() and fileio.sha256_file(pending) == expected_sha:
        fileio.commit(pending, model_path)  # the save was interrupted after its commit point
        return
    raise CheckpointError(f"{model_path} is missing or does not match {STATE_FILE} (corrupt or "
                          "replaced by hand); the run cannot be resumed exactly")


def read_state(run_dir: Path, mmap: bool = False) -> dict[str, Any]:
    """train_state.pt of `run_dir` (with `mmap`, its tensors mapped rather than read: for a look at the
    plain values before any work)."""
    path = run_dir / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no {STATE_FILE}: the run never reached its first checkpoint, so "
                              f"there is nothing to resume; start it again with your training command and "
                              f"--out {run_dir} --overwrite")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated zip, garbage, or a pickle that is not weights-only
        raise CheckpointError(f"{path} is corrupt or truncated ({type(e).__name__}); "
                              "the run cannot be resumed") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tinylm training state (format {FORMAT})")
    return state


def saved_processes(run_dir: Path) -> int:
    """How many processes trained the checkpoint of `run_dir` (recorded in its "batch"; older checkpoints:
    one RNG state per process)."""
    state = read_state(run_dir, mmap=True)
    if isinstance(state.get("batch"), dict) and "processes" in state["batch"]:
        return int(state["batch"]["processes"])
    return len(state["rng"]) if isinstance(state["rng"], list) else 1


def load_checkpoint(run_dir: Path, model: GPT, rank: int = 0, weights: WeightsFormat = FULL,
                    repair: bool = True) -> dict[str, Any]:
    """Load the weights (in the run's format `weights`: the adapter, for a LoRA run) into `model` and return the
    training state (RNG states restored; a run of several processes saved one set per rank, a list: process `rank` takes its own).
    With `repair` (the one process that writes the run directory: rank 0, before the others load), an
    interrupted save is completed and half-written temporary files are removed; without it nothing in
    the directory changes (the other processes only read: a file rank 0 is writing is never touched)."""
    state = read_state(run_dir)
    name = weights.latest
    if repair:
        _repair(run_dir, state["model_sha256"], name)
        for stale in run_dir.glob(".*.tmp"):  # half-written files of the killed process
            stale.unlink(missing_ok=True)
    elif fileio.sha256_file(run_dir / name) != state["model_sha256"]:
        raise CheckpointError(f"{run_dir / name} does not match {STATE_FILE} (rank 0 did not complete the "
                              "checkpoint, or the file was replaced by hand); the run cannot be resumed exactly")
    weights.load(model, run_dir / name)
    rng = state["rng"]
    set_rng_state(rng[rank % len(rng)] if isinstance(rng, list) else rng)
    return state


def keep_copy(run_dir: Path, step: int, keep_last: int, weights: str = MODEL_FILE) -> Path:
    """Keep the checkpoint just saved as checkpoints/step-NNNNNNN/ and drop all but the last
    `keep_last` such copies. Returns the copy's folder."""
    folder = run_dir / CHECKPOINTS_DIR
    target = folder / f"step-{step:07d}"
    staging = folder / f".{target.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in (weights, STATE_FILE):
        try:
            os.link(run_dir / name, staging / name)  # the run's file is replaced by rename later: the link stays
        except OSError:  # file systems without hard links
            with fileio.writing(staging / name):
                shutil.copy2(run_dir / name, staging / name)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    for old in sorted(p for p in folder.glob("step-*") if p.is_dir())[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return target

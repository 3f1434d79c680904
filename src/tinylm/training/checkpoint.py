"""Resumable checkpoints: model.safetensors + train_state.pt, committed together.

A checkpoint is two files that must agree. Saving writes both to temporary names, then
renames train_state.pt (the commit point: it records the sha256 of the new weights), then
model.safetensors. A SIGKILL before the commit leaves the previous checkpoint intact; after
it, `load_checkpoint` finds the new weights under their temporary name by their sha256 and
finishes the rename. train_state.pt holds only tensors and plain Python values and is read
with `torch.load(weights_only=True)`, so loading never unpickles arbitrary objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tinylm import fileio
from tinylm.errors import CheckpointError
from tinylm.model import GPT
from tinylm.rundir import MODEL_FILE, STATE_FILE, load_weights, save_weights

FORMAT = 1


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, model: GPT, state: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Atomically replace the run's checkpoint with `model` and `state` (optimizer, loader,
    counters; RNG states are added here)."""
    model_path, state_path = run_dir / MODEL_FILE, run_dir / STATE_FILE
    sha = save_weights(model, model_path, metadata, replace=False)
    full = {"format": FORMAT, "model_sha256": sha, "rng": rng_state(), **state}
    with fileio.atomic_write(state_path) as f:  # the commit point
        torch.save(full, f)
    fileio.commit(fileio.temp_path(model_path), model_path)


def _repair(run_dir: Path, expected_sha: str) -> None:
    """Make model.safetensors the weights train_state.pt was saved with, or fail clearly."""
    model_path = run_dir / MODEL_FILE
    if model_path.is_file() and fileio.sha256_file(model_path) == expected_sha:
        return
    pending = fileio.temp_path(model_path)
    if pending.is_file() and fileio.sha256_file(pending) == expected_sha:
        fileio.commit(pending, model_path)  # the save was interrupted after its commit point
        return
    raise CheckpointError(f"{model_path} is missing or does not match {STATE_FILE} (corrupt or "
                          "replaced by hand); the run cannot be resumed exactly")


def read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no {STATE_FILE}: the run never reached its first "
                              "checkpoint, so there is nothing to resume; start it again")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage, or a pickle that is not weights-only
        raise CheckpointError(f"{path} is corrupt or truncated ({type(e).__name__}); "
                              "the run cannot be resumed") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tinylm training state (format {FORMAT})")
    return state


def load_checkpoint(run_dir: Path, model: GPT) -> dict[str, Any]:
    """Load the weights into `model` and return the training state (RNG states restored)."""
    state = read_state(run_dir)
    _repair(run_dir, state["model_sha256"])
    for stale in run_dir.glob(".*.tmp"):  # half-written files of the killed process
        stale.unlink(missing_ok=True)
    load_weights(model, run_dir / MODEL_FILE)
    set_rng_state(state["rng"])
    return state

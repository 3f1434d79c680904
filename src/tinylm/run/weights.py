"""A run's weights on disk: safetensors files (no pickle) in one of two formats.

    FULL                  model.safetensors / best.safetensors: every weight of the model (the tied head once,
                          LoRA wrappers under the plain model's names: `weights_state`)
    AdapterWeights(lora)  adapter.safetensors / best_adapter.safetensors: a LoRA run's adapter "default"
                          (A and B per target layer) and the base tensors it trained (biases, norms); the
                          frozen base weights stay in the base run

`weights_format(cfg)` says which a run has; the trainer, checkpoints and `load` call its `path`, `save` and
`load` and never ask whether a run is LoRA. Every file's metadata records the format, the tinylm version,
the step and the tokenizer's fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from tinylm import fileio
from tinylm.version import __version__
from tinylm.config import LoRAConfig, RunConfig
from tinylm.errors import CheckpointError
from tinylm.model import GPT, lora
from tinylm.run.layout import ADAPTER_FILE, BEST_ADAPTER_FILE, BEST_FILE, MODEL_FILE, best_weights


def weights_state(model: GPT) -> dict[str, torch.Tensor]:
    """The tensors to store: the state dict without the tied head (it is the embedding) and without
    LoRA adapters (under the plain model's names)."""
    state = lora.base_state(model)
    if model.cfg.tie_weights:
        state.pop("head.weight")
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, Any], *,
                 replace: bool = True) -> str:
    """Write tensors atomically (with replace=False: to the temp name only). Returns the sha256."""
    meta = {"format": "tinylm-1", "tinylm_version": __version__, **{k: str(v) for k, v in metadata.items()}}
    data = safetensors.torch.save(tensors, metadata=meta)
    with fileio.atomic_write(path, replace=replace) as f:
        f.write(data)
    return fileio.sha256_bytes(data)


def save_weights(model: GPT, path: Path, metadata: dict[str, Any], *, replace: bool = True) -> str:
    """Write weights atomically (with replace=False: to the temp name only). Returns the sha256."""
    return save_tensors(weights_state(model), path, metadata, replace=replace)


def adapter_tensors(model: GPT, lora_cfg: LoRAConfig, name: str = "default") -> dict[str, torch.Tensor]:
    """What an adapter file holds: the adapter's A and B matrices, plus the base biases / norm weights
    the adapter trained too (lora.train_biases / train_norms), under their plain names."""
    state = lora.adapter_state(model, name)
    extra = lora.extra_trainable(model, lora_cfg)
    if extra:
        base = lora.base_state(model)
        state.update({k: base[k].detach().to("cpu").contiguous().clone() for k in extra})
    return state


def load_adapter(model: GPT, path: Path, lora_cfg: LoRAConfig, name: str = "default") -> dict[str, str]:
    """Load an adapter file into adapter `name` (created by `lora.add_lora`) and the base tensors it
    trained; returns the file's metadata."""
    tensors, metadata = read_weights(path)
    lora.load_adapter_state(model, tensors, name, origin=str(path))
    extra = {k: v for k, v in tensors.items() if not k.endswith((".lora_A", ".lora_B"))}
    expected = set(lora.extra_trainable(model, lora_cfg))
    if set(extra) != expected:
        raise CheckpointError(f"{path} does not fit the run's lora settings (base tensors "
                              f"{sorted(set(extra) ^ expected)[:3]})")
    params = {lora.plain_name(k): p for k, p in model.named_parameters()}
    with torch.no_grad():
        for key, tensor in extra.items():
            if tuple(params[key].shape) != tuple(tensor.shape):
                raise CheckpointError(f"{path}: {key} has shape {tuple(tensor.shape)}, the model's is "
                                      f"{tuple(params[key].shape)}")
            params[key].copy_(tensor)
    return metadata


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated/garbage files
        raise CheckpointError(f"{path} is corrupt or truncated ({e}); restore it from a copy, "
                              "or resume from the other checkpoint in the run directory") from None
    return tensors, metadata


def load_weights(model: GPT, path: Path) -> dict[str, str]:
    """Load weights into `model`, checking every name and shape. Returns the file's metadata."""
    tensors, metadata = read_weights(path)
    expected = weights_state(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit the run's config.json (missing: {missing[:3]}, "
                              f"unexpected: {unexpected[:3]})")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{path}: {name} has shape {tuple(tensor.shape)}, the config "
                                  f"expects {tuple(expected[name].shape)}")
    model.load_state_dict(tensors, strict=not model.cfg.tie_weights)
    return metadata


class WeightsFormat:
    """Which files hold a run's weights (`latest`, `best`) and how they are written and read."""

    latest: str
    best: str

    def path(self, run_dir: Path, checkpoint: str = "best") -> Path:
        """The file of `checkpoint`: best (the best validation weights if saved, else the latest), latest, or a
        path."""
        return best_weights(Path(run_dir), self.best, self.latest, checkpoint)

    def save(self, model: GPT, path: Path, metadata: dict[str, Any], *, replace: bool = True) -> str:
        """Write the model's weights of this format atomically (replace=False: to the temp name only);
        returns the sha256."""
        raise NotImplementedError

    def load(self, model: GPT, path: Path) -> dict[str, str]:
        """Load a file of this format into `model` (checked); returns its metadata."""
        raise NotImplementedError


class FullWeights(WeightsFormat):
    latest, best = MODEL_FILE, BEST_FILE

    def save(self, model: GPT, path: Path, metadata: dict[str, Any], *, replace: bool = True) -> str:
        return save_weights(model, path, metadata, replace=replace)

    def load(self, model: GPT, path: Path) -> dict[str, str]:
        return load_weights(model, path)


@dataclass
class AdapterWeights(WeightsFormat):
    """A LoRA run's adapter `name` (its `lora` settings say which base tensors it trained too)."""

    lora: LoRAConfig
    name: str = "default"
    latest, best = ADAPTER_FILE, BEST_ADAPTER_FILE

    def save(self, model: GPT, path: Path, metadata: dict[str, Any], *, replace: bool = True) -> str:
        return save_tensors(adapter_tensors(model, self.lora, self.name), path, metadata, replace=replace)

    def load(self, model: GPT, path: Path) -> dict[str, str]:
        return load_adapter(model, path, self.lora, self.name)


FULL = FullWeights()


def weights_format(cfg: RunConfig) -> WeightsFormat:
    """The weights format of a run with config `cfg`: its adapter for a LoRA fine-tune, else every weight."""
    return AdapterWeights(cfg.lora) if cfg.finetune.is_adapter_run else FULL

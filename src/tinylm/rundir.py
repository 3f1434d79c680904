"""The run directory, the unit users move around.

    config.json          the resolved RunConfig (enough to rebuild the model)
    tokenizer.tinylm.json
    model.safetensors    latest weights        best.safetensors   best validation weights
    train_state.pt       optimizer, RNG, loader position, step (see training/checkpoint.py)
    metrics.jsonl  loss.png  perplexity.png  evals.jsonl

Weights are safetensors (no pickle). `load(run_dir)` restores model + tokenizer + config for
sampling and evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import safetensors
import safetensors.torch
import torch

from tinylm import __version__, fileio
from tinylm.config import RunConfig
from tinylm.console import warn
from tinylm.errors import CheckpointError, ConfigError, TinylmError
from tinylm.generation import generate_ids, stream_text
from tinylm.model import GPT
from tinylm.runtime import resolve_device, resolve_dtype
from tinylm.tokenizers import TOKENIZER_FILE, Tokenizer, load_tokenizer

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
EVALS_FILE = "evals.jsonl"
PLOTS = ("loss.png", "perplexity.png")
RUN_FILES = {CONFIG_FILE, MODEL_FILE, BEST_FILE, STATE_FILE, METRICS_FILE, EVALS_FILE, *PLOTS,
             TOKENIZER_FILE}


# --------------------------------------------------------------------------- config


def write_config(run_dir: Path, cfg: RunConfig) -> None:
    fileio.write_json(run_dir / CONFIG_FILE, cfg.to_dict())


def read_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a tinylm run directory (no {CONFIG_FILE})")
    try:
        return RunConfig.from_dict(json.loads(path.read_text(encoding="utf-8")), origin=str(path))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is corrupt ({e})") from None
    except ConfigError as e:
        raise CheckpointError(f"{path} does not fit this tinylm {__version__}: {e}") from None


# --------------------------------------------------------------------------- weights


def weights_state(model: GPT) -> dict[str, torch.Tensor]:
    """The tensors to store: the state dict without the tied head (it is the embedding)."""
    state = model.state_dict()
    if model.cfg.tie_weights:
        state.pop("head.weight")
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_weights(model: GPT, path: Path, metadata: dict[str, Any], *, replace: bool = True) -> str:
    """Write weights atomically (with replace=False: to the temp name only). Returns the sha256."""
    meta = {"format": "tinylm-1", "tinylm_version": __version__, **{k: str(v) for k, v in metadata.items()}}
    data = safetensors.torch.save(weights_state(model), metadata=meta)
    with fileio.atomic_write(path, replace=replace) as f:
        f.write(data)
    return fileio.sha256_bytes(data)


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


# --------------------------------------------------------------------------- loading a run


def weights_path(run_dir: Path, checkpoint: str = "best") -> Path:
    if checkpoint == "best":
        return run_dir / BEST_FILE if (run_dir / BEST_FILE).is_file() else run_dir / MODEL_FILE
    if checkpoint == "latest":
        return run_dir / MODEL_FILE
    return Path(checkpoint)


@dataclass
class Run:
    """A trained model with its tokenizer and config, ready to generate or evaluate."""

    run_dir: Path
    config: RunConfig
    model: GPT
    tokenizer: Tokenizer
    device: torch.device
    dtype: torch.dtype
    weights: Path
    metadata: dict[str, str]

    def encode_prompt(self, prompt: str) -> list[int]:
        unknown = self.tokenizer.count_unknown(prompt)
        if unknown:
            warn(f"{unknown} {self.tokenizer.unit}(s) of the prompt are not in the vocabulary; mapped to <unk>")
        ids = self.tokenizer.encode(prompt) if prompt else self.tokenizer.start_ids()
        context = self.config.model.context
        if len(ids) > context:
            warn(f"the prompt has {len(ids)} tokens, more than the context ({context}); "
                 f"only its last {context} tokens are used")
        return ids

    def stream(self, prompt: str = "", *, max_new_tokens: int = 500, temperature: float = 0.8,
               top_k: int = 0, seed: int | None = None) -> Iterator[str]:
        """Yield the continuation of `prompt` piece by piece as it is generated."""
        ids = generate_ids(self.model, self.encode_prompt(prompt), max_new_tokens,
                           temperature=temperature, top_k=top_k, seed=seed,
                           stop_ids=[self.tokenizer.eot_id] if self.tokenizer.eot_id is not None else [],
                           device=self.device, dtype=self.dtype, vocab_size=self.tokenizer.vocab_size)
        eot = self.tokenizer.eot_id
        yield from stream_text((t for t in ids if t != eot), self.tokenizer.decode)

    def generate(self, prompt: str = "", **options: Any) -> str:
        """The continuation of `prompt` (without the prompt); options as for `stream`."""
        return "".join(self.stream(prompt, **options))


def record_eval(run: Run, result: dict[str, Any]) -> None:
    """Append one evaluation result to the run's evals.jsonl, with when and which weights."""
    import time

    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "weights": run.weights.name,
              "step": run.metadata.get("step"), "dtype": str(run.dtype).removeprefix("torch."), **result}
    with open(run.run_dir / EVALS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def load(run_dir: str | Path, checkpoint: str = "best", device: str = "auto", dtype: str = "auto") -> Run:
    """Restore a run for sampling or evaluation: `tinylm.load("runs/shakespeare-char")`."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    tokenizer = load_tokenizer(run_dir)
    if cfg.model.vocab_size < tokenizer.vocab_size:
        raise CheckpointError(f"{run_dir}: model.vocab_size {cfg.model.vocab_size} is smaller than the "
                              f"tokenizer's {tokenizer.vocab_size}")
    dev = resolve_device(device)
    model = GPT(cfg.model)
    path = weights_path(run_dir, checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; train the run first (`tinylm train`)")
    metadata = load_weights(model, path)
    fp = metadata.get("tokenizer_fingerprint")
    if fp and fp != tokenizer.fingerprint():
        raise TinylmError(f"{path} was trained with a different tokenizer than {run_dir}'s tokenizer file")
    model.to(dev).eval()
    return Run(run_dir, cfg, model, tokenizer, dev, resolve_dtype(dtype, dev), path, metadata)

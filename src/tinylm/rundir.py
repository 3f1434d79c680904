"""The run directory, the unit users move around.

    config.json          the resolved RunConfig (enough to rebuild the model)
    tokenizer.tinylm.json
    model.safetensors    latest weights        best.safetensors   best validation weights
    train_state.pt       optimizer, RNG, loader position, step (see training/checkpoint.py)
    metrics.jsonl  loss.png  perplexity.png  evals.jsonl

Weights are safetensors (no pickle). `load(run_dir)` restores model + tokenizer + config for
sampling and evaluation, in the inference precision asked for (`tinylm.inference`: the weights cast
to `dtype`, optionally int8 weight-only quantized); before the first generation the run packs its
linear layers for decoding and, when asked, registers the compiled decode step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import safetensors
import safetensors.torch
import torch

from tinylm import __version__, fileio, inference
from tinylm.config import RunConfig
from tinylm.console import console, warn
from tinylm.errors import CheckpointError, ConfigError, TinylmError
from tinylm.generation import (GenerationConfig, StopFilter, beam_search, cut_at_stop, generate_ids, stream_ids,
                               stream_text)
from tinylm.inputs import EmptyInputError, encode_text
from tinylm.model import GPT
from tinylm.runtime import resolve_device
from tinylm.tokenizers import TOKENIZER_FILE, Tokenizer, load_tokenizer

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
EVALS_FILE = "evals.jsonl"
PLOTS = ("loss.png", "perplexity.png")
CHECKPOINTS_DIR = "checkpoints"  # copies of the last train.keep_last checkpoints, one folder per step
TRACKER_FILES = ("tensorboard", "wandb", "wandb_id.txt")  # written by the optional experiment trackers
RUN_FILES = {CONFIG_FILE, MODEL_FILE, BEST_FILE, STATE_FILE, METRICS_FILE, EVALS_FILE, *PLOTS,
             TOKENIZER_FILE, CHECKPOINTS_DIR, *TRACKER_FILES}


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
        return RunConfig.from_dict(json.loads(path.read_text(encoding="utf-8")), origin=str(path)).validate()
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
class Completion:
    """One generated continuation: the prompt's ids, the new ids (ending with the end-of-text
    id if one was generated), the text (without end-of-text, cut before the first stop string)
    and, for beam search, the hypothesis' score (sum of log-probabilities / length ** length_penalty)."""

    prompt_ids: list[int]
    ids: list[int]
    text: str
    score: float | None = None


@dataclass
class Run:
    """A trained model with its tokenizer and config, ready to generate or evaluate.

    `generate(prompt, **options)` returns the continuation's text (a list of texts for a list of
    prompts, generated as one batch); `stream(prompt, **options)` yields it piece by piece;
    `complete(...)` also gives the ids. Options are the fields of
    `tinylm.generation.GenerationConfig` (max_new_tokens, temperature, top_k, top_p, min_p,
    repetition_penalty, seed, beams, length_penalty, num_return_sequences, stop, use_cache,
    truncate), or pass a whole `config=GenerationConfig(...)`.

    `dtype` is the precision the weights are in (and the model computes in), `quantize` "none" or
    "int8" (weight-only), `compile` whether decoding goes through the compiled decode step."""

    run_dir: Path
    config: RunConfig
    model: GPT
    tokenizer: Tokenizer
    device: torch.device
    dtype: torch.dtype
    weights: Path
    metadata: dict[str, str]
    quantize: str = "none"
    compile: bool = False
    _ready: bool = False

    def ready(self) -> Run:
        """Make the model ready to decode (once): CPU decode kernels for its linear layers
        (`inference.pack_for_decoding`) and, with `compile`, the compiled decode step (its warm-up,
        the compilation at the first generation, is reported on stderr)."""
        if not self._ready:
            inference.pack_for_decoding(self.model)
            if self.compile:
                inference.enable_compile(self.model, on_warmup=lambda s: console.print(
                    f"compiled the decode step in {s:.1f}s (a one-time warm-up)"))
            self._ready = True
        return self

    def generation_config(self, config: GenerationConfig | None = None, **options: Any) -> GenerationConfig:
        """`config` (default: the defaults) with `options` changed, validated."""
        return (config or GenerationConfig()).replace(**options)

    def encode_prompt(self, prompt: str, truncate: bool = True, item: str = "the prompt") -> list[int]:
        """The prompt's ids (`tinylm.inputs.encode_text`): a prompt that encodes to no tokens (empty,
        or whitespace for the word tokenizer) is the empty prompt, the tokenizer's start ids; a
        prompt longer than the context keeps its last `context` tokens (with a warning), or is an
        error if not `truncate`. `item` names the prompt in messages."""
        ids = encode_text(self.tokenizer, prompt, item=item)
        unknown = self.tokenizer.count_unknown(prompt)
        if unknown:
            warn(f"{unknown} {self.tokenizer.unit}(s) of {item} are not in the vocabulary; mapped to <unk>")
        context = self.model.cfg.context
        if len(ids) > context:
            if not truncate:
                raise ConfigError(f"{item} has {len(ids)} tokens, more than the context ({context}); "
                                  "shorten it, or allow truncation to its last tokens (truncate=True)")
            warn(f"{item} has {len(ids)} tokens, more than the context ({context}); "
                 f"only its last {context} tokens are used")
            ids = ids[-context:]
        return ids

    def _engine_args(self) -> dict[str, Any]:
        return dict(vocab_size=self.tokenizer.vocab_size, stop_ids=self.tokenizer.stop_ids,
                    device=self.device, dtype=self.dtype, suppress_ids=sorted(self.tokenizer.suppressed_ids))

    def _text(self, prompt_ids: list[int], ids: list[int], cfg: GenerationConfig) -> str:
        """The text `ids` add after the prompt, decoded after the prompt's ids: tokenizers that
        space tokens by their neighbours (word) or merge bytes across tokens join it correctly."""
        decode, markers = self.tokenizer.decode, self.tokenizer.markers
        head = decode(prompt_ids)
        whole = decode([*prompt_ids, *(t for t in ids if t not in markers)])
        text = whole[len(head):] if whole.startswith(head) else decode([t for t in ids if t not in markers])
        return cut_at_stop(text, cfg.stop)

    def complete(self, prompts: str | Sequence[str] = "", config: GenerationConfig | None = None,
                 **options: Any) -> list[Completion]:
        """Continue one prompt or a batch of prompts; num_return_sequences completions per
        prompt, grouped by prompt (best first for beam search)."""
        cfg = self.generation_config(config, **options)
        if not isinstance(prompts, (str, list, tuple)):
            raise EmptyInputError(f"the prompt must be text or a list of texts, got {type(prompts).__name__}")
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        encoded = [self.encode_prompt(p, cfg.truncate, "the prompt" if len(texts) == 1 else f"prompt {i} of "
                                      f"{len(texts)}") for i, p in enumerate(texts, 1)]
        if not encoded:
            return []
        args = self._engine_args()
        self.ready()
        if cfg.beams > 1:
            return [Completion(ids, beam.ids, self._text(ids, beam.ids, cfg), beam.score) for ids in encoded
                    for beam in beam_search(self.model, ids, cfg, decode=self.tokenizer.decode, **args)]
        new = generate_ids(self.model, encoded, cfg, decode=self.tokenizer.decode, **args)
        return [Completion(ids, out, self._text(ids, out, cfg)) for ids, out in zip(encoded, new, strict=True)]

    def generate(self, prompt: str | Sequence[str] = "", config: GenerationConfig | None = None,
                 **options: Any) -> str | list[str] | list[list[str]]:
        """The continuation of `prompt` (without the prompt). A list of prompts is generated as
        one batch and gives a list of texts; with num_return_sequences = n > 1 each prompt gives
        a list of n texts."""
        cfg = self.generation_config(config, **options)
        texts = [c.text for c in self.complete(prompt, cfg)]
        n = cfg.num_return_sequences
        if n > 1:
            grouped = [texts[i:i + n] for i in range(0, len(texts), n)]
            return grouped[0] if isinstance(prompt, str) else grouped
        return texts[0] if isinstance(prompt, str) else texts

    def stream(self, prompt: str = "", config: GenerationConfig | None = None, **options: Any) -> Iterator[str]:
        """Yield the continuation of `prompt` piece by piece as it is generated (UTF-8-safe;
        text that may begin a stop string is held back until it is clear). Beam search
        cannot stream: its best sequence comes as one piece at the end."""
        cfg = self.generation_config(config, **options)
        if cfg.num_return_sequences > 1:
            raise ConfigError("stream gives one sequence; use generate for num_return_sequences > 1")
        if cfg.beams > 1:
            yield from (t for t in [self.generate(prompt, cfg)] if t)
            return
        prompt_ids = self.encode_prompt(prompt, cfg.truncate)
        ids = stream_ids(self.model, prompt_ids, cfg, **self.ready()._engine_args())
        markers = self.tokenizer.markers
        pieces = stream_text((t for t in ids if t not in markers), self.tokenizer.decode, prefix=prompt_ids)
        yield from StopFilter(cfg.stop)(pieces) if cfg.stop else pieces


def record_eval(run: Run, result: dict[str, Any]) -> None:
    """Append one evaluation result to the run's evals.jsonl, with when and which weights."""
    import time

    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "weights": run.weights.name,
              "step": run.metadata.get("step"), "dtype": str(run.dtype).removeprefix("torch."), **result}
    if run.quantize != "none":
        record["quantize"] = run.quantize
    with open(run.run_dir / EVALS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def load(run_dir: str | Path, checkpoint: str = "best", device: str = "auto", dtype: str = "auto",
         quantize: str = "none", compile: str = "auto") -> Run:
    """Restore a run for sampling or evaluation: `tinylm.load("runs/shakespeare-char")`.

    dtype: the weights' precision (auto: bfloat16 on GPUs and on CPUs with native bfloat16, else
    float32); quantize: none | int8 (weight-only, torchao; computes in bfloat16 on CPUs); compile:
    auto | on | off, torch.compile of the decode step (auto: on CUDA GPUs only). An option the
    device cannot run is a one-line ConfigError."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    tokenizer = load_tokenizer(run_dir)
    if cfg.model.vocab_size < tokenizer.vocab_size:
        raise CheckpointError(f"{run_dir}: model.vocab_size {cfg.model.vocab_size} is smaller than the "
                              f"tokenizer's {tokenizer.vocab_size}")
    dev = resolve_device(device)
    model = GPT(cfg.model)
    precision = inference.resolve(dev, dtype, quantize, inference.linear_params(model))
    use_compile = inference.use_compile(compile, dev)
    path = weights_path(run_dir, checkpoint)
    if not path.is_file():
        if checkpoint in ("best", "latest"):  # a run killed before its first checkpoint
            raise CheckpointError(f"{run_dir} has no weights: the run never reached its first checkpoint; start it "
                                  f"again with your training command and --out {run_dir} --overwrite")
        raise CheckpointError(f"{path} does not exist; give --checkpoint best, latest or a .safetensors file")
    metadata = load_weights(model, path)
    fp = metadata.get("tokenizer_fingerprint")
    if fp and fp != tokenizer.fingerprint():
        raise TinylmError(f"{path} was trained with a different tokenizer than {run_dir}'s tokenizer file")
    inference.prepare(model, dev, precision, quantize)
    return Run(run_dir, cfg, model, tokenizer, dev, precision, path, metadata, quantize, use_compile)

"""The run directory, the unit users move around.

    config.json          the resolved RunConfig (enough to rebuild the model; every path in it absolute)
    tokenizer.tinylm.json
    model.safetensors    latest weights        best.safetensors   best validation weights
    train_state.pt       optimizer, RNG, loader position, step (see training/checkpoint.py)
    metrics.jsonl  loss.png  perplexity.png  evals.jsonl

A LoRA fine-tune (`tinylm finetune`, finetune.method = "lora") holds no model weights of its own:

    adapter.safetensors  latest adapter        best_adapter.safetensors   best validation adapter
    config.json          finetune.base (the base run), finetune.base_weights + base_sha256 (the base
                         weights it was trained on: loading refuses base weights that changed since)

Weights are safetensors (no pickle). `load(run_dir)` restores model + tokenizer + config for
sampling and evaluation, in the inference precision asked for (`generation/precision.py`: the weights
cast to `dtype`, optionally int8 weight-only quantized); for an adapter run, the base's weights with the
adapter "default" active. Before the first generation the run packs its linear layers for decoding
and, when asked, builds the compiled decode step it then hands to every engine it runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import safetensors
import safetensors.torch
import torch

from tinylm import __version__, fileio
from tinylm.config import LoRAConfig, RunConfig, absolute_paths
from tinylm.console import console, warn
from tinylm.errors import CheckpointError, ConfigError, TinylmError, WriteError
from tinylm.config import GenerationConfig
from tinylm.generation import precision
from tinylm.generation.compiled import DecodeStep
from tinylm.generation.generate import batch_rows, generate, stream
from tinylm.generation.kernels import pack_for_decoding
from tinylm.generation.sampling import TokenLogprob
from tinylm.inputs import EmptyInputError, encode_text
from tinylm.model import GPT, lora
from tinylm.runtime import resolve_device
from tinylm.templates import ALPACA_PREAMBLE, Template, get_template, unknown_marker_count
from tinylm.tokenizers import TOKENIZER_FILE, Tokenizer, load_tokenizer

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
STATE_FILE = "train_state.pt"
ADAPTER_FILE = "adapter.safetensors"  # a LoRA run's latest adapter (the base's weights stay in the base run)
BEST_ADAPTER_FILE = "best_adapter.safetensors"
METRICS_FILE = "metrics.jsonl"
EVALS_FILE = "evals.jsonl"
PLOTS = ("loss.png", "perplexity.png")
CHECKPOINTS_DIR = "checkpoints"  # copies of the last train.keep_last checkpoints, one folder per step
TRACKER_FILES = ("tensorboard", "wandb", "wandb_id.txt")  # written by the optional experiment trackers
RUN_FILES = {CONFIG_FILE, MODEL_FILE, BEST_FILE, STATE_FILE, METRICS_FILE, EVALS_FILE, *PLOTS,
             TOKENIZER_FILE, CHECKPOINTS_DIR, *TRACKER_FILES, ADAPTER_FILE, BEST_ADAPTER_FILE, "tokenizer.json"}


# --------------------------------------------------------------------------- config


def write_config(run_dir: Path, cfg: RunConfig) -> None:
    fileio.write_json(run_dir / CONFIG_FILE, cfg.to_dict())


def read_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if run_dir.is_file():
        raise CheckpointError(f"{run_dir} is a file, not a run directory; give the directory a tinylm train, "
                              "finetune or import wrote (it holds config.json)")
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a tinylm run directory (no {CONFIG_FILE})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # not JSON, or not even text
        raise CheckpointError(f"{path} is corrupt ({e}); restore it from a copy") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is corrupt (a JSON {type(data).__name__}, not the run's settings); "
                              "restore it from a copy")
    try:
        cfg = RunConfig.from_dict(data, origin=str(path)).validate()
    except ConfigError as e:
        raise CheckpointError(f"{path} does not fit this tinylm {__version__}: {e}") from None
    origin = _working_dir_of(run_dir, cfg.train.out_dir)
    return absolute_paths(cfg, origin) if origin is not None else cfg


def _working_dir_of(run_dir: Path, out_dir: str) -> Path | None:
    """Where the command that wrote a config with relative paths ran (earlier versions recorded paths as
    typed; now they are absolute): the run directory's absolute path less the relative train.out_dir it
    recorded ("R" in /home/me/R: /home/me). None when the config cannot tell (no relative out_dir, or a
    moved run)."""
    if not out_dir or os.path.isabs(out_dir):
        return None
    parts = Path(os.path.normpath(out_dir)).parts
    here = Path(fileio.absolute(run_dir)).parts
    if ".." in parts or len(parts) >= len(here) or here[-len(parts):] != parts:
        return None
    return Path(*here[:-len(parts)])


# --------------------------------------------------------------------------- weights


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


def save_adapter(model: GPT, path: Path, metadata: dict[str, Any], lora_cfg: LoRAConfig, *,
                 replace: bool = True) -> str:
    """Write adapter "default" (see `adapter_tensors`) atomically. Returns the sha256."""
    return save_tensors(adapter_tensors(model, lora_cfg), path, metadata, replace=replace)


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


# --------------------------------------------------------------------------- loading a run


def chat_template_of(cfg: RunConfig) -> Template | None:
    """The prompt template a run was fine-tuned with (finetune.template in its config), or None. For a
    run fine-tuned on instruction records, a conversation without a system message gets the Alpaca
    preamble, as every instruction record had in training."""
    ft = cfg.finetune
    if not ft.template:
        return None
    template = get_template(ft.template)
    if ft.format == "instruction" and not template.default_system:
        template = dataclasses.replace(template, default_system=ALPACA_PREAMBLE)
    return template


def weights_path(run_dir: Path, checkpoint: str = "best", adapter: bool = False) -> Path:
    """The weights file (the adapter file for an adapter run) of `checkpoint`: best, latest or a path."""
    best, latest = (BEST_ADAPTER_FILE, ADAPTER_FILE) if adapter else (BEST_FILE, MODEL_FILE)
    if checkpoint == "best":
        return run_dir / best if (run_dir / best).is_file() else run_dir / latest
    if checkpoint == "latest":
        return run_dir / latest
    return Path(checkpoint)


def base_weights(cfg: RunConfig, run_dir: Path | str = "") -> Path:
    """The base weights of a fine-tuned run (cfg.finetune): the file it was fine-tuned from, checked
    against the recorded sha256 (recorded here if not yet). One-line errors for a base run that is
    missing, an adapter itself, or whose weights changed since."""
    ft = cfg.finetune
    base = Path(ft.base)
    what = f"the base run {base}" + (f" of {run_dir}" if run_dir else "")
    if not base.is_dir():
        raise CheckpointError(f"{what} does not exist; give an existing run directory (trained with `tinylm "
                              "train` or imported with `tinylm import`)" + (", or set finetune.base in "
                              f"{Path(run_dir) / CONFIG_FILE} to where it moved" if run_dir else ""))
    base_cfg = read_config(base)
    if base_cfg.finetune.adapter:
        raise CheckpointError(f"{base} is itself a LoRA adapter run; merge it first (`tinylm merge {base} --out "
                              "MERGED`) and fine-tune the merged run")
    path = base / ft.base_weights if ft.base_weights else weights_path(base, "best")
    if not path.is_file():
        raise CheckpointError(f"{what} has no weights file {path.name}; train it first, or restore the file")
    sha = fileio.sha256_file(path)
    if not ft.base_sha256:
        ft.base_weights, ft.base_sha256 = path.name, sha
    elif sha != ft.base_sha256:
        raise CheckpointError(f"the base weights {path} changed since {run_dir or 'this adapter'} was trained on "
                              f"them (sha256 {ft.base_sha256[:12]}... recorded, {sha[:12]}... now); restore those "
                              "weights or fine-tune again on the new ones")
    return path


@dataclass
class Completion:
    """One generated continuation: the prompt's ids, the new ids (ending with the end-of-text
    id if one was generated), the text (without end-of-text, cut before the first stop string),
    for beam search the hypothesis' score (sum of log-probabilities / length ** length_penalty), and
    when asked (`logprobs=N`) each new token's log-probability with its N likeliest alternatives."""

    prompt_ids: list[int]
    ids: list[int]
    text: str
    score: float | None = None
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Adapter:
    """A LoRA adapter attached to a run's model (`Run.attach_adapter`): its name on the model, its run
    directory, config and weights file."""

    name: str
    run_dir: Path
    config: RunConfig
    weights: Path

    @property
    def chat_template(self) -> Template | None:
        return chat_template_of(self.config)


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
    step: DecodeStep | None = None  # the compiled decode step, once `ready` built it (with `compile`)
    _ready: bool = False
    _weights_sha256: str = field(default="", repr=False)

    def ready(self) -> Run:
        """Make the model ready to decode (once): CPU decode kernels for its linear layers
        (`kernels.pack_for_decoding`) and, with `compile`, the compiled decode step `step` (its warm-up,
        the compilation at the first generation, is reported on stderr)."""
        if not self._ready:
            pack_for_decoding(self.model)
            if self.compile:
                self.step = DecodeStep(self.model, on_warmup=lambda s: console.print(
                    f"compiled the decode step in {s:.1f}s (a one-time warm-up)"))
            self._ready = True
        return self

    @property
    def base_sha256(self) -> str:
        """sha256 of the base weights under this run's model: the recorded base of an adapter run, else
        the run's own weights file (what an adapter trained on this run records)."""
        if self.config.finetune.adapter:
            return self.config.finetune.base_sha256
        if not self._weights_sha256:
            self._weights_sha256 = fileio.sha256_file(self.weights)
        return self._weights_sha256

    @property
    def chat_template(self) -> Template | None:
        """The prompt template the run was fine-tuned with, or None (see `chat_template_of`)."""
        return chat_template_of(self.config)

    def merge_adapter(self) -> Run:
        """Fold an adapter run's adapter "default" into the model's weights, in place (W + (alpha / r) B A;
        a tied head with an adapter is untied): the model is then a plain GPT, as exporters need it. A
        no-op for runs without one. Returns the run."""
        if "default" in lora.adapter_names(self.model):
            lora.merge_lora(self.model, "default")
        return self

    def attach_adapter(self, name: str, run_dir: str | Path, checkpoint: str = "best") -> Adapter:
        """Load the adapter of LoRA run `run_dir` onto this run's model as adapter `name` (not made
        active: see `tinylm.model.lora.set_active`); returns it (its config and `chat_template`). Refused
        in one line when that adapter was trained on other base weights (recorded sha256), or trained
        base biases / norms (they cannot be switched per adapter: merge such a run instead)."""
        run_dir = Path(run_dir)
        cfg = read_config(run_dir)
        if not cfg.finetune.adapter:
            raise CheckpointError(f"{run_dir} is not a LoRA adapter run (finetune.method is "
                                  f"{cfg.finetune.method or 'none'}); load it as a run of its own")
        if cfg.finetune.base_sha256 != self.base_sha256:
            raise CheckpointError(f"the adapter {run_dir} was trained on other base weights than {self.run_dir}'s "
                                  f"(sha256 {cfg.finetune.base_sha256[:12]}... vs {self.base_sha256[:12]}...); "
                                  "attach it to the run it was fine-tuned from")
        if lora.extra_trainable(self.model, cfg.lora):
            raise CheckpointError(f"the adapter {run_dir} also trained base biases or norms, which one model cannot "
                                  f"switch per adapter; merge it (`tinylm merge {run_dir} --out MERGED`) and load that")
        with torch.random.fork_rng(devices=[]):
            lora.add_lora(self.model, cfg.lora, name, dtype=precision.adapter_dtype(self.device, self.dtype))
        path = weights_path(run_dir, checkpoint, adapter=True)
        load_adapter(self.model, path, cfg.lora, name)
        return Adapter(name, run_dir, cfg, path)

    def chat(self, messages: Sequence[dict[str, str]], config: GenerationConfig | None = None, *,
             template: str | Template | None = None, **options: Any) -> str:
        """The assistant's reply to `messages` ([{"role": "system" | "user" | "assistant", "content"}]),
        rendered with the run's template (or `template`) and generated until end-of-text or the
        template's stop strings. Options as for `generate`."""
        tpl = get_template(template) if isinstance(template, str) else template or self.chat_template
        if tpl is None:
            raise ConfigError(f"{self.run_dir} has no chat template (it was not fine-tuned on instruction or chat "
                              "data); choose one: tinylm sample --template chat|alpaca|plain (Python: "
                              "template='chat')")
        if tpl is not self.chat_template:
            warn_unknown_markers(tpl, self.tokenizer)
        cfg = self.generation_config(config, **options)
        stops = tpl.reply_stops(self.tokenizer.eot_id is not None)
        cfg = cfg.replace(stop=[*cfg.stop, *(s for s in stops if s not in cfg.stop)])
        ids = self.chat_ids(messages, tpl, cfg.max_new_tokens, cfg.truncate)
        (reply,) = generate(self.model, batch_rows([ids], cfg), **self.engine_args())
        return reply.beams[0].text if reply.beams else reply.text

    def chat_ids(self, messages: Sequence[dict[str, str]], template: Template, max_new_tokens: int,
                 truncate: bool = True) -> list[int]:
        """The ids a reply to `messages` is generated after (`Run.chat` and `tinylm serve` use this): the
        conversation rendered with `template` and the assistant prefix, encoded as in fine-tuning
        (`data.finetune.encode_messages`: the whole text at once, BOS first where the tokenizer adds it);
        messages that encode to nothing are the empty prompt (the start ids). As in fine-tuning, a long
        conversation loses tokens from the left, leaving room for the reply in the window (a reply
        generated past the context would see a slid, shorter window): a ConfigError if not `truncate`."""
        from tinylm.data.finetune import encode_messages

        ids, _ = encode_messages(self.tokenizer, template, messages, add_generation_prompt=True)
        ids = ids or self.tokenizer.start_ids()
        keep = self.model.cfg.context - min(max_new_tokens, self.model.cfg.context // 4)
        if len(ids) > keep:
            if not truncate:
                raise ConfigError(f"the conversation has {len(ids)} tokens; with room for the reply only {keep} fit "
                                  "the context: shorten it, or allow truncation to its last tokens (truncate=True)")
            warn(f"the conversation has {len(ids)} tokens; its last {keep} are used (room for the reply)")
            ids = ids[-keep:]
        return ids

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

    def engine_args(self) -> dict[str, Any]:
        """What an engine on this run's model takes from the run (`generation.generate`'s keywords): the
        tokenizer's decode, vocabulary, stop, suppressed and marker ids, the device, dtype and compiled step."""
        tok = self.ready().tokenizer
        return dict(decode=tok.decode, vocab_size=tok.vocab_size, stop_ids=tok.stop_ids,
                    suppress_ids=sorted(tok.suppressed_ids), markers=sorted(tok.markers), device=self.device,
                    dtype=self.dtype, step=self.step)

    def complete(self, prompts: str | Sequence[str] = "", config: GenerationConfig | None = None, *,
                 logprobs: int | None = None, **options: Any) -> list[Completion]:
        """Continue one prompt or a batch of prompts; num_return_sequences completions per
        prompt, grouped by prompt (best first for beam search). With `logprobs` = N (sampling and
        greedy), each completion has every new token's log-probability and its N likeliest alternatives."""
        cfg = self.generation_config(config, **options)
        if not isinstance(prompts, (str, list, tuple)):
            raise EmptyInputError(f"the prompt must be text or a list of texts, got {type(prompts).__name__}")
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        encoded = [self.encode_prompt(p, cfg.truncate, "the prompt" if len(texts) == 1 else f"prompt {i} of "
                                      f"{len(texts)}") for i, p in enumerate(texts, 1)]
        if not encoded:
            return []
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0):
            raise ConfigError(f"logprobs must be the number of alternatives to report per token (>= 0), "
                              f"got {logprobs!r}")
        rows = batch_rows(encoded, cfg, logprobs=logprobs if cfg.beams == 1 else None)
        out = generate(self.model, rows, **self.engine_args())
        if cfg.beams > 1:
            return [Completion(row.prompt, beam.ids, beam.text, beam.score) for row, g in zip(rows, out, strict=True)
                    for beam in g.beams]
        return [Completion(row.prompt, g.ids, g.text, logprobs=g.logprobs) for row, g in zip(rows, out, strict=True)]

    def generate(self, prompt: str | Sequence[str] = "", config: GenerationConfig | None = None, *,
                 logprobs: int | None = None, **options: Any) -> str | list[str] | list[list[str]] | Any:
        """The continuation of `prompt` (without the prompt). A list of prompts is generated as
        one batch and gives a list of texts; with num_return_sequences = n > 1 each prompt gives
        a list of n texts. With `logprobs` = N the same shapes hold `Completion`s instead of texts
        (`.text`, `.ids`, `.logprobs`: each new token's log-probability and its N likeliest alternatives)."""
        cfg = self.generation_config(config, **options)
        done = self.complete(prompt, cfg, logprobs=logprobs)
        items = [c.text for c in done] if logprobs is None else done
        n = cfg.num_return_sequences
        if n > 1:
            grouped = [items[i:i + n] for i in range(0, len(items), n)]
            return grouped[0] if isinstance(prompt, str) else grouped
        return items[0] if isinstance(prompt, str) else items

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
        rows = batch_rows([self.encode_prompt(prompt, cfg.truncate)], cfg)
        for event in stream(self.model, rows, **self.engine_args()):
            if event.text:
                yield event.text


def record_eval(run: Run, result: dict[str, Any]) -> None:
    """Append one evaluation result to the run's evals.jsonl, with when and which weights."""
    import time

    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "weights": run.weights.name,
              "step": run.metadata.get("step"), "dtype": str(run.dtype).removeprefix("torch."), **result}
    if run.quantize != "none":
        record["quantize"] = run.quantize
    try:
        with fileio.open_writer(run.run_dir / EVALS_FILE, "ab") as f:
            f.write((json.dumps(record) + "\n").encode("utf-8"))
    except WriteError as e:  # the result is the work: report it, do not lose it for want of a record
        warn(f"the result was not recorded in evals.jsonl: {e}")


def warn_unknown_markers(template: Template, tokenizer: Tokenizer) -> None:
    """A warning when `template`'s markers are partly outside `tokenizer`'s vocabulary (they become <unk>:
    the model cannot tell the roles apart), for a template other than the one a run was fine-tuned with."""
    if unknown_marker_count(template, tokenizer):
        fits = [name for name in ("plain", "alpaca", "chat")
                if name != template.name and not unknown_marker_count(get_template(name), tokenizer)]
        fix = (f"use the {' or '.join(fits)} template" if fits else
               "no shipped template fits this vocabulary: fine-tune on text that has the markers' characters")
        warn(f"the {template.name!r} template's markers use {tokenizer.unit}s this model's {tokenizer.kind} "
             f"tokenizer does not have (they become <unk>); {fix}")


def load(run_dir: str | Path, checkpoint: str = "best", device: str = "auto", dtype: str = "auto",
         quantize: str = "none", compile: str | bool = "auto") -> Run:
    """Restore a run for sampling or evaluation: `tinylm.load("runs/shakespeare-char")`. A LoRA adapter
    run loads its base run's weights (checked against the recorded sha256) with the adapter "default"
    active; `checkpoint` then picks the adapter (best or latest).

    dtype: the weights' precision (auto: bfloat16 on GPUs and on CPUs with native bfloat16, else
    float32); quantize: none | int8 (weight-only, torchao; computes in bfloat16 on CPUs); compile:
    auto | on | off (or True / False), torch.compile of the decode step (auto: on CUDA GPUs only).
    An option the device cannot run is a one-line ConfigError."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    tokenizer = load_tokenizer(run_dir)
    if cfg.model.vocab_size < tokenizer.vocab_size:
        raise CheckpointError(f"{run_dir}: model.vocab_size {cfg.model.vocab_size} is smaller than the "
                              f"tokenizer's {tokenizer.vocab_size}")
    dev = resolve_device(device)
    model = GPT(cfg.model)
    weights_dtype = precision.resolve(dev, dtype, quantize, precision.linear_params(model))
    use_compile = precision.use_compile(compile, dev)
    adapter = cfg.finetune.adapter
    if adapter:
        load_weights(model, base_weights(cfg, run_dir))
        with torch.random.fork_rng(devices=[]):  # A's initial values are overwritten: leave the RNG alone
            lora.add_lora(model, cfg.lora)
    path = weights_path(run_dir, checkpoint, adapter=adapter)
    if not path.is_file():
        if checkpoint in ("best", "latest"):  # a run killed before its first checkpoint
            raise CheckpointError(f"{run_dir} has no weights: the run never reached its first checkpoint; start it "
                                  f"again with your training command and --out {run_dir} --overwrite")
        raise CheckpointError(f"{path} does not exist; give --checkpoint best, latest or a .safetensors file")
    metadata = load_adapter(model, path, cfg.lora) if adapter else load_weights(model, path)
    if adapter:
        lora.set_active(model, "default")
    fp = metadata.get("tokenizer_fingerprint")
    if fp and fp != tokenizer.fingerprint():
        raise TinylmError(f"{path} was trained with a different tokenizer than {run_dir}'s tokenizer file")
    precision.prepare(model, dev, weights_dtype, quantize)
    return Run(run_dir, cfg, model, tokenizer, dev, weights_dtype, path, metadata, quantize, use_compile)

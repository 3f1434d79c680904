"""A trained run, loaded: `tinylm.load(run_dir) -> Run`, what sampling, evaluation, export and serving use.

    load(run_dir, checkpoint, device, dtype, quantize, compile)
        config.json (layout.read_config) + tokenizer ─► GPT(cfg.model) ─► weights of the run's format
        (weights.py; an adapter run: the base's weights, sha256-checked, then its adapter "default",
        activated) ─► precision.to_inference (the inference dtype, optionally int8 weight-only) ─► Run
    Run.ready()   the first generation: CPU decode kernels, and with `compile` the run's DecodeStep
    Run.generate / complete / stream / chat   rows ─► the generation engine (`generate.generate` / `stream`
        with `engine_args()`: the tokenizer's decode, vocabulary, stop / suppressed / marker ids, the device,
        dtype and compiled step) ─► texts, ids, log-probabilities, beams
    Run.attach_adapter(name, adapter_run)   another LoRA run's adapter on the same model (the server's
        model ids)      Run.engine()   a long-lived engine on the model (the server's), adapters per row
    record_eval: a result appended to evals.jsonl
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from tinylm import fileio
from tinylm.chat import Template, conversation_ids, get_template, run_template, warn_unknown_markers
from tinylm.config import GenerationConfig, RunConfig
from tinylm.console import console, warn
from tinylm.errors import CheckpointError, ConfigError, TinylmError, WriteError
from tinylm.generation import precision
from tinylm.generation.compiled import DecodeStep
from tinylm.generation.engine import Engine
from tinylm.generation.generate import batch_rows, generate, stream
from tinylm.generation.kernels import pack_for_decoding
from tinylm.generation.sampling import TokenLogprob
from tinylm.errors import EmptyInputError
from tinylm.tokenizers.prompt import encode_text
from tinylm.model import GPT, lora
from tinylm.run.layout import EVALS_FILE, base_weights, read_config
from tinylm.run.weights import FULL, AdapterWeights, weights_format
from tinylm.runtime import resolve_device
from tinylm.tokenizers import Tokenizer, load_tokenizer


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
        return run_template(self.config)


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
    _adapters: list[str] = field(default_factory=list, repr=False)  # attached by `attach_adapter`
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
        if self.config.finetune.is_adapter_run:
            return self.config.finetune.base_sha256
        if not self._weights_sha256:
            self._weights_sha256 = fileio.sha256_file(self.weights)
        return self._weights_sha256

    @property
    def chat_template(self) -> Template | None:
        """The prompt template the run was fine-tuned with, or None (see `chat.run_template`)."""
        return run_template(self.config)

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
        if not cfg.finetune.is_adapter_run:
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
        fmt = AdapterWeights(cfg.lora, name)
        path = fmt.path(run_dir, checkpoint)
        fmt.load(self.model, path)
        self._adapters.append(name)
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
        """The ids a reply to `messages` is generated after (`Run.chat` and `tinylm serve` use this):
        `chat.conversation_ids` for this run's tokenizer and context."""
        return conversation_ids(self.tokenizer, template, messages, self.model.cfg.context, max_new_tokens, truncate)

    def generation_config(self, config: GenerationConfig | None = None, **options: Any) -> GenerationConfig:
        """`config` (default: the defaults) with `options` changed, validated."""
        return (config or GenerationConfig()).replace(**options)

    def encode_prompt(self, prompt: str, truncate: bool = True, item: str = "the prompt") -> list[int]:
        """The prompt's ids (`tinylm.tokenizers.prompt.encode_text`): a prompt that encodes to no tokens (empty,
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

    def engine(self, max_batch: int = 16, max_queue: int = 256) -> Engine:
        """A long-lived engine over this run's model (the server's): `engine_args()`, and when adapters are
        attached (`attach_adapter`) a row's `adapter` names the one it decodes with (`lora.set_active`)."""
        activate = functools.partial(lora.set_active, self.model) if self._adapters else None
        return Engine(self.model, max_batch=max_batch, max_queue=max_queue, activate=activate, **self.engine_args())

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
    fmt = weights_format(cfg)
    if fmt is not FULL:
        FULL.load(model, base_weights(cfg, run_dir))
        with torch.random.fork_rng(devices=[]):  # A's initial values are overwritten: leave the RNG alone
            lora.add_lora(model, cfg.lora)
    path = fmt.path(run_dir, checkpoint)
    if not path.is_file():
        if checkpoint in ("best", "latest"):  # a run killed before its first checkpoint
            raise CheckpointError(f"{run_dir} has no weights: the run never reached its first checkpoint; start it "
                                  f"again with your training command and --out {run_dir} --overwrite")
        raise CheckpointError(f"{path} does not exist; give --checkpoint best, latest or a .safetensors file")
    metadata = fmt.load(model, path)
    if fmt is not FULL:
        lora.set_active(model, "default")
    fp = metadata.get("tokenizer_fingerprint")
    if fp and fp != tokenizer.fingerprint():
        raise TinylmError(f"{path} was trained with a different tokenizer than {run_dir}'s tokenizer file")
    precision.to_inference(model, dev, weights_dtype, quantize)
    return Run(run_dir, cfg, model, tokenizer, dev, weights_dtype, path, metadata, quantize, use_compile)

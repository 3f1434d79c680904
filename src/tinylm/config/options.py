"""Options of the commands that use a trained run (not saved with it): decoding, and how the run is loaded.

    GenerationConfig   decoding options (Run.generate, the generation engine's rows, the server's requests)
    InferenceOptions   how a run is loaded: checkpoint, device, dtype, quantize, compile (`tinylm.load`'s
                       arguments), one section shared by
    SampleConfig       (`tinylm sample`: GenerationConfig + InferenceOptions + its own)
    EvalConfig         (`tinylm eval`: InferenceOptions + what to score)
    ServeConfig        (`tinylm serve`: InferenceOptions + the server and its limits)
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from tinylm.config.fields import INT64_MAX, check_fields, check_range, check_seeds, require
from tinylm.config.run import COMPILE, DTYPES, ENCODING_ERRORS, QUANTIZE
from tinylm.errors import ConfigError

MAX_BEAMS = 1024  # beams are rows of one batch, each with its own KV cache


@dataclass
class GenerationConfig:
    """How to continue a prompt. The order of the logit filters is: repetition penalty,
    temperature, top-k, top-p, min-p; then one token is drawn (or the likeliest with
    temperature <= 0). Ids in `suppress_tokens` (default: the tokenizer's `suppressed_ids`, ids
    that are never training targets such as char's `<unk>`) are never generated. Beam search
    (beams > 1) is deterministic: it scores sequences by their log-probability under the model
    (after the repetition penalty) and ignores temperature, top-k, top-p and min-p."""

    max_new_tokens: int = 500
    temperature: float = 0.8  # <= 0 means greedy
    top_k: int = 0  # sample among the k likeliest tokens (0 = off)
    top_p: float = 1.0  # nucleus: the smallest set of tokens whose probability reaches p (1 = off)
    min_p: float = 0.0  # drop tokens less likely than min_p * the likeliest token's probability (0 = off)
    repetition_penalty: float = 1.0  # CTRL: divide positive / multiply negative logits of seen tokens (1 = off)
    seed: int | None = None  # seeds the sampler (None: a fresh random seed)
    beams: int = 1  # beam search width (1 = sampling / greedy)
    length_penalty: float = 1.0  # beam score = sum of log-probabilities / length ** length_penalty
    num_return_sequences: int = 1  # the n best beams (n <= beams)
    stop: list[str] = field(default_factory=list)  # stop before the first of these strings (text is cut there)
    use_cache: bool = True  # KV cache (False: run the model over the last `context` tokens for every token)
    truncate: bool = True  # a prompt longer than the context keeps its last `context` tokens (False: error)
    suppress_tokens: list[int] | None = None  # ids never generated (None: the tokenizer's suppressed_ids, e.g. <unk>)

    def validate(self) -> GenerationConfig:
        """Check every option (one-line ConfigError). NaN and infinities are refused everywhere;
        the edges are defined: temperature so small that float32 cannot tell it from 0 is greedy,
        a huge one is uniform sampling; see docs/input-rules.md."""
        if isinstance(self.stop, str):  # one stop string given where a list belongs
            self.stop = [self.stop]
        check_fields(self)
        check_range("max_new_tokens", self.max_new_tokens, ge=0)
        check_range("temperature", self.temperature, note=" (<= 0 is greedy)")
        check_range("top_k", self.top_k, ge=0, note=" (0 = off)")
        check_range("top_p", self.top_p, gt=0, le=1)
        check_range("min_p", self.min_p, ge=0, lt=1)
        check_range("repetition_penalty", self.repetition_penalty, gt=0, note=" (1 = off)")
        check_range("beams", self.beams, ge=1, le=MAX_BEAMS)
        check_range("length_penalty", self.length_penalty)
        check_range("num_return_sequences", self.num_return_sequences, ge=1)
        if self.num_return_sequences > self.beams:
            hint = ("raise beams to at least as many" if self.beams > 1 else
                    f"they are the best hypotheses of a beam search (beams={self.num_return_sequences}); "
                    "for several samples use --num-samples N (Python: a batch [prompt] * N)")
            raise ConfigError(f"num_return_sequences ({self.num_return_sequences}) must not exceed beams "
                              f"({self.beams}): {hint}")
        require(isinstance(self.stop, (list, tuple)) and all(isinstance(s, str) and s for s in self.stop),
               "stop strings must be non-empty text")
        require(self.suppress_tokens is None or (isinstance(self.suppress_tokens, (list, tuple)) and all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= INT64_MAX for i in self.suppress_tokens)),
            "suppress_tokens must be a list of token ids (None: the tokenizer's suppressed_ids)")
        return self

    def replace(self, **options: Any) -> GenerationConfig:
        """A validated copy with `options` changed; an unknown option is a one-line ConfigError.
        The copy is a plain GenerationConfig, whatever subclass `self` is."""
        names = [f.name for f in dataclasses.fields(GenerationConfig)]
        for key in options:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known options: {', '.join(names)}"
                raise ConfigError(f"unknown generation option {key!r}; {hint}")
        values = {name: getattr(self, name) for name in names}
        values["stop"] = list(values["stop"]) if isinstance(values["stop"], (list, tuple)) else values["stop"]
        if isinstance(values["suppress_tokens"], (list, tuple)):
            values["suppress_tokens"] = list(values["suppress_tokens"])
        return GenerationConfig(**{**values, **options}).validate()


@dataclass
class InferenceOptions:
    """How a trained run is loaded to generate or score with: which weights, where, in which precision,
    and whether decoding goes through the compiled step (the arguments of `tinylm.load`)."""

    checkpoint: str = "best"  # best | latest | a .safetensors file
    device: str = "auto"
    dtype: str = "auto"  # the weights' precision: auto (fastest for the device) | float32 | bfloat16 | float16
    quantize: str = "none"  # none | int8 (weight-only, torchao)
    compile: str = "auto"  # torch.compile the decode step: auto (CUDA GPUs) | on | off

    def check_inference(self, section: str) -> None:
        """One-line ConfigErrors for unknown dtype, quantize or compile values (`section` names them)."""
        require(self.dtype in DTYPES, f"{section}.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        require(self.quantize in QUANTIZE,
               f"{section}.quantize must be one of {', '.join(QUANTIZE)}, got {self.quantize!r}")
        require(self.compile in COMPILE, f"{section}.compile must be one of {', '.join(COMPILE)}, got {self.compile!r}")

    def load_options(self) -> dict[str, str]:
        """The keywords of `tinylm.load(run_dir, **options)`."""
        return {name: getattr(self, name) for name in ("checkpoint", "device", "dtype", "quantize", "compile")}


@dataclass
class SampleConfig(GenerationConfig, InferenceOptions):
    """Options of `tinylm sample` (not saved with the run): the decoding options of
    `GenerationConfig` (max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed,
    beams, length_penalty, num_return_sequences, stop, use_cache, truncate), how the run is loaded
    (`InferenceOptions`) and these."""

    prompt: str = ""
    num_samples: int = 1  # samples drawn one after another (seeds seed, seed + 1, ...)
    stream: bool = False  # print the text as it is generated (else all at once at the end)
    verbose: bool = False  # also print the prompt's ids and tokens and the generated ids
    chat: bool = False  # chat in the run's template: a loop in a terminal, one turn with --prompt
    system: str = ""  # the system message of a chat ("" = none, or the template's default)
    template: str = ""  # the chat's template for runs without their own: alpaca | chat | plain

    def validate(self) -> SampleConfig:
        super().validate()
        check_range("num_samples", self.num_samples, ge=1)
        check_seeds(self.seed, self.num_samples, unit="sample")  # sample i draws from seed + i
        require(self.template in ("", "alpaca", "chat", "plain"),
               f"template must be alpaca, chat or plain, got {self.template!r}")
        self.check_inference("sample")
        return self


@dataclass
class EvalConfig(InferenceOptions):
    """Options of `tinylm eval` (not saved with the run): how the run is loaded (`InferenceOptions`; it
    scores whole windows, so `compile` has nothing to compile) and what to score."""

    data: str = ""  # a prepared data directory ("", with no text or dataset either: the run's own data)
    text: str = ""  # or a text file, scored whole
    dataset: str = ""  # or a catalog dataset (`tinylm datasets`), prepared with the run's tokenizer
    source_dir: str = ""  # local copy of the dataset's raw files ("" = $TINYLM_DATA_DIR, else download)
    split: str = "val"  # split of --data or --dataset
    stride: int = 0  # tokens between scoring windows (0 = the training window: non-overlapping; smaller = more history)
    errors: str = "strict"  # invalid UTF-8 in --text: strict | replace
    hellaswag: str = ""  # a HellaSwag jsonl file, or "default" (local copy / download cache / download)
    choices: str = ""  # a multiple-choice jsonl file: {"context", "choices", "label"}
    cloze: str = ""  # a cloze jsonl file: {"context", "continuation"} (LAMBADA-style last-word accuracy)
    pairs: str = ""  # a preference-pairs file: {"prompt", "chosen", "rejected"} (accuracy and margin vs the base)
    tasks: str = ""  # benchmarks by name, comma-separated (tasks.TASKS; "all"; "list" describes them)
    num_fewshot: int = 0  # --tasks: few-shot examples per prompt, drawn as lm-evaluation-harness draws them
    fewshot_seed: int = 1234  # --tasks: seed of the few-shot draws (the harness's fewshot_random_seed)
    task_data: str = ""  # --tasks: local rows, DIR/<task>/<split>.jsonl|.parquet ("" = the Hub through `datasets`)
    download_to: str = ""  # --tasks: write the tasks' rows from the Hub into DIR/<task>/<split>.jsonl
    limit: int = 0  # --tasks: the first N items of each task; the item files: a seeded random subset (0 = all)
    seed: int = 0  # seed of --limit's subset (the item files)
    batch_size: int = 16

    def validate(self) -> EvalConfig:
        check_fields(self, "eval.")
        self.check_inference("eval")
        # eval.stride's range depends on the run's training window: evaluate() checks it
        check_range("eval.limit", self.limit, ge=0, note=" (0 = all items)")
        check_range("eval.num_fewshot", self.num_fewshot, ge=0)
        check_range("eval.batch_size", self.batch_size, ge=1)
        require(self.errors in ENCODING_ERRORS, f"eval.errors must be strict or replace, got {self.errors!r}")
        return self


@dataclass
class ServeConfig(InferenceOptions):
    """Options of `tinylm serve` (not saved with the run): the HTTP server, its limits, what it serves, and
    how the run is loaded (`InferenceOptions`)."""

    host: str = "127.0.0.1"  # the address to listen on (another than loopback without an API key: a warning)
    port: int = 8000  # 0 = any free port
    model_name: str = ""  # the model id clients ask for; "" = the run directory's name
    api_key: str = ""  # clients must send "Authorization: Bearer KEY"; "" = $TINYLM_API_KEY, else no key
    max_batch: int = 16  # sequences decoding together (continuous batching)
    max_queue: int = 256  # sequences waiting for a slot; a request that does not fit gets 503 + Retry-After
    max_tokens: int = 1024  # the most new tokens one request may ask for
    max_body: int = 1_048_576  # bytes of a request body (larger: 413)
    chat_template: str = ""  # for runs without their own: alpaca | chat | plain ("" = chat requests get a 400)
    adapter: list[str] = field(default_factory=list)  # NAME=ADAPTER_RUN: a LoRA adapter served as model NAME
    # who may call: Host names answered besides loopback ones and the bound name (".example.com": it and
    # its subdomains; "*": any), and web origins allowed cross-origin (CORS; none by default)
    allowed_hosts: list[str] = field(default_factory=list)
    cors_origins: list[str] = field(default_factory=list)
    # seconds: a request's headers / its body must arrive within, a client must take some of its response
    # within (else its connection is closed), and requests running at shutdown may go on for
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    write_timeout: float = 30.0
    shutdown_timeout: float = 5.0

    def validate(self) -> ServeConfig:
        check_fields(self, "serve.")
        self.check_inference("serve")
        require(0 <= self.port <= 65535, f"serve.port must be in 0..65535, got {self.port}")
        require(bool(self.host), "serve.host must name an address, e.g. 127.0.0.1")
        for name in ("max_batch", "max_queue", "max_tokens", "max_body"):
            require(getattr(self, name) >= 1, f"serve.{name} must be >= 1, got {getattr(self, name)}")
        for spec in self.adapter:
            name, sep, path = spec.partition("=")
            require(bool(sep and name.strip() and path.strip()), f"--adapter expects NAME=ADAPTER_RUN, got {spec!r}")
        for name in ("header_timeout", "body_timeout", "write_timeout"):
            check_range(f"serve.{name}", getattr(self, name), gt=0, note=" seconds")
        check_range("serve.shutdown_timeout", self.shutdown_timeout, ge=0,
                    note=" seconds (0: end running requests at once)")
        for host in self.allowed_hosts:
            require(host == "*" or _is_ipv6(host) or (host.strip(".") != "" and not set(host) & set("/:@[] \t")),
                   f"--allowed-host expects a host name as clients write it (e.g. example.com, .example.com for "
                   f"it and its subdomains, or * for any), without a scheme, port or path; got {host!r}")
        for origin in self.cors_origins:
            scheme, sep, rest = origin.partition("://")
            require(origin == "*" or (sep and scheme in ("http", "https") and rest and not set(rest) & set("/?# ")),
                   f"--cors-origin expects a web origin such as https://example.com or http://localhost:3000 "
                   f"(scheme, host and port; no path), or *; got {origin!r}")
        return self


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True

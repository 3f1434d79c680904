"""The OpenAI API's request and error shapes: JSON bodies in, typed requests or `APIError`s out.

    raw body bytes ──► parse_json (size limit -> 413; invalid UTF-8, broken JSON, NaN/Infinity -> 400)
                             │
                             ▼
    CompletionBody / ChatBody (pydantic, strict: wrong types, unknown fields, out-of-range values -> 400
                             │  with `param` naming the field, e.g. "messages[1].role")
                             ▼
    completion_rows / chat messages + sampling options checked against the server's limits (`Limits`)
                             │  (max_tokens, n, logprobs, seed + choices past int64, unsupported OpenAI options -> 400)
                             ▼
                    GenerationConfig per choice (seed + choice index), consumed by the engine

Every failure is an `APIError(status, message, param, code)`, rendered as
`{"error": {"message", "type", "param", "code"}}`; nothing here raises anything else on bad input
(property-tested with hypothesis). Field names and ranges follow the OpenAI API reference for
`/v1/completions` and `/v1/chat/completions`; `top_k`, `min_p`, `repetition_penalty` and `truncate`
are tinylm's extras (the `openai` client sends them with `extra_body`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tinylm.chat.templates import check_messages
from tinylm.config import GenerationConfig
from tinylm.errors import ConfigError, DataError
from tinylm.config.fields import INT64_MAX, INT64_MIN, check_seeds

MAX_STOP = 16  # stop strings per request (OpenAI allows 4)
MAX_LOGPROBS = 20  # alternatives per token
MAX_TOP_K = 1_000_000  # top_k beyond the vocabulary keeps every token; larger values are typos

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
               405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
               500: "server_error", 503: "server_error"}


class APIError(Exception):
    """An HTTP error in the OpenAI shape. `headers` carries e.g. Retry-After."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


# --------------------------------------------------------------------------- JSON


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body: bytes, max_bytes: int) -> Any:
    """The JSON value of a request body, or an APIError (413 when over `max_bytes`, else 400)."""
    if len(body) > max_bytes:
        raise APIError(413, f"the request body has {len(body):,} bytes, more than this server's limit of "
                            f"{max_bytes:,} (--max-body)", code="request_too_large")
    if not body.strip():
        raise APIError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not valid UTF-8 (byte {e.start})", code="invalid_json") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    _check_unicode(value)
    return value


def _check_unicode(value: Any, where: str = "") -> None:
    """A 400 for a string holding a lone UTF-16 surrogate (JSON's "\\ud800" escape without its pair):
    valid JSON, but not text that UTF-8 (and so any tokenizer) can encode."""
    stack = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as e:
                raise APIError(400, f"{path or 'the request body'} holds a lone surrogate "
                                    f"(\\u{ord(item[e.start]):04x}), which is not a Unicode character; send "
                                    "the pair of escapes of one character, or the character itself",
                               path or None, "invalid_value") from None
        elif isinstance(item, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in item.items())
            stack.extend((k, path) for k in item if isinstance(k, str))
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))


# --------------------------------------------------------------------------- bodies

Prompt = Union[str, list[str], list[int], list[list[int]]]


class _Body(BaseModel):
    """Fields shared by both endpoints."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)  # any int64, as `tinylm sample --seed`
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    user: str | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, Any] | None = None
    # tinylm's extras
    top_k: int | None = Field(None, ge=0, le=MAX_TOP_K)
    min_p: float | None = Field(None, ge=0.0, lt=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    truncate: bool | None = None  # a prompt longer than the context: keep its last tokens (default) or 413


class CompletionBody(_Body):
    prompt: Prompt
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None
    # tinylm's extras (vLLM's names): beam search of best_of beams, the n best returned
    use_beam_search: bool | None = None
    length_penalty: float | None = Field(None, ge=-10.0, le=10.0)


class ChatBody(_Body):
    messages: list[Any]
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    response_format: dict[str, Any] | None = None
    # sent by current OpenAI SDKs and front-ends; harmless here: accepted and ignored (no tools, no storage)
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    tool_choice: Literal["none"] | None = None
    parallel_tool_calls: bool | None = None


_FIELD_HINTS = {
    "prompt": "prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids",
    "stop": f"stop must be a string or a list of at most {MAX_STOP} strings",
    "messages": "messages must be a list of {\"role\", \"content\"} objects",
}


def _param(loc: tuple[Any, ...]) -> str | None:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _validation_error(e: ValidationError) -> APIError:
    err = e.errors(include_url=False)[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
    param = _param(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        return APIError(400, f"unknown field {param!r}; see the OpenAI API reference for this endpoint "
                             "(tinylm's extras: top_k, min_p, repetition_penalty, truncate; "
                             "on /v1/completions use_beam_search, length_penalty)", param, "unknown_field")
    if kind == "missing":
        return APIError(400, f"{param} is required", param, "missing_field")
    if loc and loc[0] in _FIELD_HINTS and kind not in ("greater_than_equal", "less_than_equal", "greater_than",
                                                       "less_than"):
        return APIError(400, _FIELD_HINTS[str(loc[0])], str(loc[0]), "invalid_type")
    where = f"{param}: " if param else "the request body: "
    msg = err["msg"]
    if kind in ("model_type", "model_attributes_type", "dict_type") and not loc:
        msg = "expected a JSON object"
    return APIError(400, where + msg[0].lower() + msg[1:], param, "invalid_value")


def _validate(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _validation_error(e) from None
    except (ValueError, TypeError, RecursionError) as e:  # pragma: no cover - pydantic reports these itself
        raise APIError(400, f"the request body: {e}", code="invalid_value") from None


# --------------------------------------------------------------------------- checks against the server


@dataclass
class Limits:
    """What this server accepts: `max_tokens` (per request), `max_batch` (choices per request, n),
    `max_rows` (prompts x n per request), `vocab_size` (token-id prompts), `default_max_tokens`."""

    max_tokens: int = 1024
    max_batch: int = 16
    max_rows: int = 256
    vocab_size: int = 0
    completion_default_tokens: int = 16  # the OpenAI API's default for /v1/completions


@dataclass
class Sampling:
    """The checked sampling options of one request: one GenerationConfig per choice comes from
    `config(i)` (seed + i for choice i)."""

    max_tokens: int
    n: int
    stream: bool
    include_usage: bool
    truncate: bool
    options: dict[str, Any]

    def config(self, index: int, extra_stop: list[str] = ()) -> GenerationConfig:
        opts = dict(self.options)
        if opts.get("seed") is not None:  # within int64: `check_seeds` refused the request otherwise
            opts["seed"] += index
        opts["stop"] = [*opts.get("stop", []), *(s for s in extra_stop if s not in opts.get("stop", []))]
        return GenerationConfig(max_new_tokens=self.max_tokens, **opts).validate()


def _sampling(body: _Body, limits: Limits, max_tokens: int | None, default_tokens: int) -> Sampling:
    if max_tokens is None:
        max_tokens = min(default_tokens, limits.max_tokens)
    if max_tokens > limits.max_tokens:
        raise APIError(400, f"max_tokens is {max_tokens:,}; this server generates at most {limits.max_tokens:,} "
                            "tokens per request (tinylm serve --max-tokens)", "max_tokens", "invalid_value")
    n = 1 if body.n is None else body.n
    if n > limits.max_batch:
        raise APIError(400, f"n is {n}; this server decodes at most {limits.max_batch} choices of one request "
                            "together (tinylm serve --max-batch)", "n", "invalid_value")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise APIError(400, f"{name} is not supported; use repetition_penalty (CTRL, > 1 penalises "
                                "repeated tokens)", name, "unsupported_value")
    if body.logit_bias:
        raise APIError(400, "logit_bias is not supported", "logit_bias", "unsupported_value")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > MAX_STOP or any(not s for s in stops):
        raise APIError(400, f"stop must be non-empty strings, at most {MAX_STOP} of them", "stop", "invalid_value")
    include_usage = False
    if body.stream_options is not None:
        if not body.stream:
            raise APIError(400, "stream_options is only allowed with stream: true", "stream_options",
                           "invalid_value")
        unknown = set(body.stream_options) - {"include_usage"}
        usage = body.stream_options.get("include_usage", False)
        if unknown or not isinstance(usage, bool):
            raise APIError(400, "stream_options takes {\"include_usage\": true|false}", "stream_options",
                           "invalid_value")
        include_usage = usage
    options: dict[str, Any] = {"stop": stops, "seed": body.seed,
                               "temperature": 1.0 if body.temperature is None else body.temperature}
    for name in ("top_p", "top_k", "min_p", "repetition_penalty"):
        if getattr(body, name) is not None:
            options[name] = getattr(body, name)
    return Sampling(max_tokens, n, bool(body.stream), include_usage,
                    True if body.truncate is None else body.truncate, options)


def _check_seeds(seed: int | None, choices: int) -> None:
    """The rule of `tinylm sample` and `generate_ids` (`tinylm.config.check_seeds`): choice i draws from
    seed + i, which must be an int64 seed; a 400 naming the largest seed that works otherwise."""
    try:
        check_seeds(seed, choices, unit="choice")
    except ConfigError as e:
        raise APIError(400, str(e), "seed", "invalid_value") from None


@dataclass
class CompletionRequest:
    model: str
    prompts: list[str | list[int]]  # text, or token ids
    sampling: Sampling
    echo: bool
    logprobs: int | None
    beam_search: bool = False  # one beam search of sampling.options["beams"] per prompt, its n best the choices


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    sampling: Sampling
    logprobs: int | None  # top_logprobs when logprobs is true, else None


def completion_request(data: Any, limits: Limits) -> CompletionRequest:
    """A /v1/completions body (already parsed JSON) checked against the server's limits."""
    body: CompletionBody = _validate(CompletionBody, data)
    if body.suffix:
        raise APIError(400, "suffix (insertion) is not supported", "suffix", "unsupported_value")
    prompt = body.prompt
    if isinstance(prompt, str):
        prompts: list[str | list[int]] = [prompt]
    elif not prompt:
        raise APIError(400, "prompt is an empty list", "prompt", "invalid_value")
    elif isinstance(prompt[0], int):
        prompts = [list(prompt)]
    else:
        prompts = list(prompt)
    for i, p in enumerate(prompts):
        if isinstance(p, list):
            if not p:
                raise APIError(400, f"prompt[{i}] has no token ids", "prompt", "invalid_value")
            bad = next((t for t in p if not 0 <= t < limits.vocab_size), None)
            if bad is not None:
                raise APIError(400, f"token id {bad} is outside the vocabulary (0 to {limits.vocab_size - 1})",
                               "prompt", "invalid_value")
    sampling = _sampling(body, limits, body.max_tokens, limits.completion_default_tokens)
    rows = sampling.n
    if body.use_beam_search:
        rows = _beam_options(body, sampling, limits)
    elif body.best_of is not None and body.best_of != sampling.n:
        raise APIError(400, "best_of other than n needs use_beam_search: true (the n best of best_of beams); "
                            "sampling returns its n choices", "best_of", "unsupported_value")
    elif body.length_penalty is not None:
        raise APIError(400, "length_penalty applies to beam search only (use_beam_search: true)", "length_penalty",
                       "unsupported_value")
    if len(prompts) * rows > limits.max_rows:
        raise APIError(400, f"{len(prompts)} prompts x {rows} sequences each is more than the {limits.max_rows} "
                            "sequences this server queues for one request (tinylm serve --max-queue)",
                       "prompt", "invalid_value")
    _check_seeds(body.seed, len(prompts) * sampling.n)
    return CompletionRequest(body.model, prompts, sampling, bool(body.echo), body.logprobs, bool(body.use_beam_search))


def _beam_options(body: CompletionBody, sampling: Sampling, limits: Limits) -> int:
    """Beam search's options into `sampling` (best_of beams, default n; the n best returned); the rows it
    decodes together. Beam search is deterministic (temperature, top_p, top_k, min_p and seed do not apply),
    knows its best sequences only at the end (no stream) and reports no per-token logprobs."""
    beams = sampling.n if body.best_of is None else body.best_of
    if beams < sampling.n:
        raise APIError(400, f"best_of ({beams}) must be at least n ({sampling.n}): the n best of best_of beams "
                            "are returned", "best_of", "invalid_value")
    if beams > limits.max_batch:
        raise APIError(400, f"best_of is {beams}; a beam search decodes its beams together, and this server "
                            f"decodes at most {limits.max_batch} rows together (tinylm serve --max-batch)",
                       "best_of", "invalid_value")
    if sampling.stream:
        raise APIError(400, "beam search cannot stream: it knows its best sequences only at the end; "
                            "send stream: false", "stream", "unsupported_value")
    if body.logprobs is not None:
        raise APIError(400, "logprobs are not reported for beam search (each beam has a score only)", "logprobs",
                       "unsupported_value")
    sampling.options.update(beams=beams, num_return_sequences=sampling.n)
    if body.length_penalty is not None:
        sampling.options["length_penalty"] = body.length_penalty
    return beams


def _message_text(message: Any, i: int) -> Any:
    """OpenAI content as text: a string, or a list of {"type": "text", "text"} parts joined."""
    if not isinstance(message, dict):
        return message
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise APIError(400, f"messages[{i}].content[{j}]: only text parts ({{\"type\": \"text\", "
                                    "\"text\": ...}) are supported", f"messages[{i}].content", "invalid_value")
            texts.append(part["text"])
        content = "".join(texts)
    extra = set(message) - {"role", "content", "name"}
    if extra:
        key = sorted(map(str, extra))[0]
        raise APIError(400, f"messages[{i}]: unknown field {key!r} (tools and function calls are not supported)",
                       f"messages[{i}].{key}", "unknown_field")
    out = {k: v for k, v in message.items() if k != "name"}
    if "content" in out:
        out["content"] = content
    if out.get("role") == "developer":  # the OpenAI API's newer name for the system message
        out["role"] = "system"
    return out


def chat_request(data: Any, limits: Limits) -> ChatRequest:
    """A /v1/chat/completions body (already parsed JSON) checked against the server's limits."""
    body: ChatBody = _validate(ChatBody, data)
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise APIError(400, "give max_tokens or max_completion_tokens, not both", "max_completion_tokens",
                       "invalid_value")
    if body.response_format not in (None, {"type": "text"}):
        raise APIError(400, "response_format: only {\"type\": \"text\"} is supported", "response_format",
                       "unsupported_value")
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs", "invalid_value")
    messages = [_message_text(m, i) for i, m in enumerate(body.messages)]
    try:
        messages = check_messages(messages, "messages")
    except DataError as e:
        text = str(e)
        raise APIError(400, text, text.split(":", 1)[0], "invalid_value") from None
    max_tokens = body.max_completion_tokens if body.max_tokens is None else body.max_tokens
    sampling = _sampling(body, limits, max_tokens, limits.max_tokens)
    _check_seeds(body.seed, sampling.n)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    return ChatRequest(body.model, messages, sampling, logprobs)


def finite(x: float | None) -> float | None:
    """A log-probability as JSON can carry it (-inf becomes a very negative number)."""
    if x is None:
        return None
    return x if math.isfinite(x) else -9999.0


__all__ = ["APIError", "ChatRequest", "CompletionRequest", "Limits", "Sampling", "chat_request", "completion_request",
           "parse_json"]

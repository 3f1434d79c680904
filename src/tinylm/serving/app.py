"""The HTTP side of `tinylm serve`: an OpenAI-compatible API (FastAPI) over the generation engine.

    client ──HTTP──► Host allowed? Origin its own (or --cors-origin)? (403) ──► [CORS] ──► FastAPI route
       ──► API key (Bearer, constant-time) ──► body (Content-Type JSON or 415, size-limited, within
       --body-timeout or 408) ──► protocol.py ──► checked request
                                                                                                    │
       prompt text / chat messages (run's own template, else --chat-template) ──► token ids (truncated
       to the context, or 413) ──► one Row per choice (use_beam_search: one beam Row per prompt, its n
       best beams the choices) ──► Run.engine().submit (queue full or shutting down: 503 + Retry-After) │
       engine thread ──Event──► loop.call_soon_threadsafe ──► asyncio.Queue of the request ──► JSON body,
       or SSE chunks `data: {json}` ending with `data: [DONE]`; a client that goes away cancels its rows

Every request ends in the protocol's way: a stream's choices each get a `finish_reason` ("stop",
"length"; "error" when generation failed or the server shut down, followed by an error event) and the
stream ends with `data: [DONE]`; a whole response is its JSON or a 503. What ends a request early
(a client that disconnects, a timeout, a refusal for a busy or closing server) is one console line.

Routes: GET / (the playground page), GET /health, GET /v1/models[/{id}], POST /v1/completions,
POST /v1/chat/completions (no redirects: a path with a final slash is a 404 naming the route). Every
error is `{"error": {"message", "type", "param", "code"}}` with a 4xx status (503 when the queue is full,
generation failed or the server is shutting down); unexpected exceptions become a 500 in the same shape
without a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import json
import os
import re
import time
import uuid
import warnings
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from tinylm.version import __version__
from tinylm.chat.encode import warn_unknown_markers
from tinylm.chat.templates import Template, get_template
from tinylm.config import ServeConfig
from tinylm.console import TinylmWarning, console
from tinylm.errors import ConfigError
from tinylm.generation.engine import Closing, Event, QueueFull, Row
from tinylm.generation.engine import Request as EngineRequest
from tinylm.generation.sampling import TokenLogprob
from tinylm.tokenizers.prompt import encode_text
from tinylm.run.run import load
from tinylm.serving.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    Limits,
    chat_request,
    completion_request,
    finite,
    parse_json,
)

ROUTES = ("/health", "/v1/models", "/v1/completions", "/v1/chat/completions")
RETRY_AFTER = "1"  # seconds a client should wait when the queue is full
POLL = 0.25  # seconds between checks that a waiting client is still connected
CUT_SHORT = {"error": "generation_failed", "shutdown": "server_shutting_down"}  # engine finishes -> error codes


def note(client: Any, message: str) -> None:
    """One console line about a request or connection that ended early; `client` is the ASGI scope's
    (host, port), or a request (its client, method and path)."""
    where = ""
    if isinstance(client, Request):
        where = f" {client.method} {client.url.path}"
        client = client.client
    who = f"{client[0]}:{client[1]}" if client else "a client"
    console.print(f"{who}{where}: {message}", markup=False, highlight=False)


# --------------------------------------------------------------------------- who may call


def host_name(header: str) -> str | None:
    """The host of a Host header (lower case, without its port and a final dot; an IPv6 address
    without its brackets), or None when the header is not a host[:port]."""
    value = header.strip().lower()
    if value.startswith("["):
        name, bracket, port = value[1:].partition("]")
        if not bracket or _ip(name) is None or (port and not (port.startswith(":") and _port(port[1:]))):
            return None
        return name
    name, colon, port = value.partition(":")
    if colon and not _port(port):
        return None
    name = name.removesuffix(".")
    return name if re.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*", name) else None


def _port(text: str) -> bool:
    return re.fullmatch(r"[0-9]{1,5}", text) is not None and int(text) <= 65535


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class Hosts:
    """Which Host headers the server answers (the defence against DNS rebinding: a page of another site
    that makes its name point at this machine sends that name). Answered: `localhost` and `*.localhost`,
    loopback addresses, the address or name the server listens on (`bound`; listening on all
    addresses, 0.0.0.0 or ::, any IP address, which no rebinding can send), and `allowed` (names;
    ".example.com": it and its subdomains; "*": every Host, also none)."""

    def __init__(self, bound: str, allowed: list[str] = ()):
        self.any = "*" in allowed
        self.names = {a.lower().rstrip(".") for a in allowed if a != "*" and not a.startswith(".")}
        self.suffixes = tuple(a.lower().rstrip(".") for a in allowed if a.startswith("."))
        bound = bound.strip("[]").lower()
        self.bound_ip = _ip(bound)
        if self.bound_ip is None:
            self.names.add(bound.rstrip("."))
        self.all_addresses = self.bound_ip is not None and self.bound_ip.is_unspecified

    def allows(self, header: str | None) -> bool:
        if self.any:
            return True
        name = host_name(header or "")
        if name is None:
            return False
        if name == "localhost" or name.endswith(".localhost") or name in self.names:
            return True
        address = _ip(name)
        if address is not None:
            return address.is_loopback or self.all_addresses or address == self.bound_ip
        return any(name == s[1:] or name.endswith(s) for s in self.suffixes)


def _origin_host(origin: str) -> str | None:
    """The host[:port] of a web origin ("https://example.com:8443" -> "example.com:8443")."""
    _, sep, rest = origin.partition("://")
    return rest.lower() if sep and rest else None


class _Guard:
    """ASGI middleware, outermost: a request whose Host the server does not answer (`Hosts`) gets a 403
    (400 without a Host), and so does a POST sent by a web page of another origin (its Origin header
    names another host than Host; allowed: `cors_origins`). Browsers can then neither drive the API
    from other sites' pages (with the 415 for bodies not sent as JSON, which a page can only send after
    a CORS preflight that this server refuses) nor read it through a rebound name."""

    def __init__(self, app: Any, hosts: Hosts, cors_origins: list[str]):
        self.app, self.hosts = app, hosts
        self.origins = {o.lower() for o in cors_origins}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts = [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"]
        origins = [v.decode("latin-1") for k, v in scope["headers"] if k == b"origin"]
        host = hosts[0] if len(hosts) == 1 else None if not hosts else ", ".join(hosts)  # several: refused
        origin = ", ".join(origins) if origins else None
        error = None
        if not self.hosts.allows(host):
            if not (host or "").strip():
                error = APIError(400, "the request has no Host header; send one naming this server (HTTP/1.1 "
                                      "requires it)", code="missing_host")
            else:
                shown = host if len(host) <= 100 else host[:100] + "..."
                name = host_name(host) or shown
                error = APIError(403, f"this server does not answer to the host {shown!r} (a page of another site "
                                      "may have pointed that name at it); if clients reach it by that name, start it "
                                      f"with --allowed-host {name}", code="host_not_allowed")
        elif (origin is not None and scope["method"] not in ("GET", "HEAD", "OPTIONS")
              and _origin_host(origin) != (host or "").lower() and origin.lower() not in self.origins
              and "*" not in self.origins):
            shown = origin if len(origin) <= 100 else origin[:100] + "..."
            error = APIError(403, f"requests from web pages of another origin ({shown}) are refused; to let that page "
                                  f"use this server, start it with --cors-origin {shown}", code="origin_not_allowed")
        if error is None:
            await self.app(scope, receive, send)
        else:
            await _error_response(error)(scope, receive, send)


@dataclass
class Model:
    """One model id this server answers to: the run itself (adapter None) or a LoRA adapter on it."""

    id: str
    adapter: str | None
    template: Template | None
    created: int


class Service:
    """A loaded run with its engine, model ids and limits; the routes call into it."""

    def __init__(self, run_dir: str | Path, cfg: ServeConfig):
        self.cfg = cfg.validate()
        self.run = load(run_dir, **cfg.load_options())
        self.api_key = cfg.api_key or os.environ.get("TINYLM_API_KEY", "")
        tok = self.run.tokenizer
        fallback = get_template(cfg.chat_template) if cfg.chat_template else None
        if fallback is not None:
            warn_unknown_markers(fallback, tok)
        base_template = self.run.chat_template or fallback
        created = int(self.run.weights.stat().st_mtime)
        name = cfg.model_name or Path(run_dir).resolve().name
        self.models: dict[str, Model] = {name: Model(name, None, base_template, created)}
        for i, spec in enumerate(cfg.adapter):
            model_id, _, path = (part.strip() for part in spec.partition("="))
            if model_id in self.models:
                raise ConfigError(f"--adapter {spec}: the model id {model_id!r} is already taken; choose another NAME")
            # any model id (dots and slashes too, as in "poet-v1.2"): the adapter's key on the model is ours
            handle = self.run.attach_adapter(f"adapter_{i}", path)
            self.models[model_id] = Model(model_id, f"adapter_{i}", handle.chat_template or base_template, created)
        self.limits = Limits(max_tokens=cfg.max_tokens, max_batch=cfg.max_batch, max_rows=cfg.max_queue,
                             vocab_size=tok.vocab_size)
        self.run.ready()  # decode kernels (and the compiled decode step) after the adapters are attached
        self.engine = self.run.engine(max_batch=cfg.max_batch, max_queue=cfg.max_queue)
        self.context = self.run.config.model.context
        self.hosts = Hosts(cfg.host, cfg.allowed_hosts)

    # ------------------------------------------------------------------ checks

    def authorize(self, request: Request) -> None:
        if not self.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
            raise APIError(401, "invalid or missing API key; send it as \"Authorization: Bearer KEY\"",
                           code="invalid_api_key")

    def model(self, model_id: str) -> Model:
        if model_id not in self.models:
            raise APIError(404, f"the model {model_id!r} does not exist; this server has "
                                f"{', '.join(map(repr, self.models))} (GET /v1/models)", "model", "model_not_found")
        return self.models[model_id]

    async def body(self, request: Request) -> Any:
        """The request's JSON: sent as application/json (else 415), within --body-timeout (else 408 and
        the connection closed); oversized bodies are drained (up to a bound) and refused with 413. A
        client that disconnects before its body ends is noted (the answer goes nowhere)."""
        kind = request.headers.get("content-type", "")
        if kind.split(";")[0].strip().lower() != "application/json":
            shown = repr(kind[:100]) if kind else "none"
            raise APIError(415, f"the request body must be JSON sent with \"Content-Type: application/json\" "
                                f"(got {shown})", code="unsupported_media_type")
        limit = self.cfg.max_body
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > 64 * limit:
            raise APIError(413, f"the request body has {int(length):,} bytes, more than this server's limit of "
                                f"{limit:,} (--max-body)", code="request_too_large", headers={"Connection": "close"})
        data, size = bytearray(), 0

        async def read() -> None:
            nonlocal data, size
            async for chunk in request.stream():
                size += len(chunk)
                if size <= limit:
                    data += chunk
                elif size > 64 * limit:
                    break

        try:
            await asyncio.wait_for(read(), self.cfg.body_timeout)
        except asyncio.TimeoutError:
            note(request, f"the request body did not arrive within {self.cfg.body_timeout:g} s (--body-timeout); "
                          "answered 408 and closed the connection")
            raise APIError(408, f"the request body did not arrive within {self.cfg.body_timeout:g} s; send it at "
                                "once", code="request_timeout", headers={"Connection": "close"}) from None
        except ClientDisconnect:
            note(request, f"the client disconnected after {size:,} bytes of its request body, before its end")
            raise APIError(400, "the request body ended early (the client disconnected)",
                           code="incomplete_body") from None
        if size > limit:
            raise APIError(413, f"the request body has more than this server's limit of {limit:,} bytes "
                                "(--max-body)", code="request_too_large")
        return parse_json(bytes(data), limit)

    def fit(self, ids: list[int], truncate: bool, what: str = "prompt", extra: int = 0) -> list[int]:
        """`ids` cut to the context (+ `extra`) per the generation engine's rule (its last tokens), or a 413."""
        limit = self.context + extra
        if len(ids) <= limit:
            return ids
        if not truncate:
            raise APIError(413, f"the {what} has {len(ids):,} tokens, more than the model's context "
                                f"({self.context}{' + 1 when scored' if extra else ''}); shorten it, or allow "
                                "truncation to its last tokens (\"truncate\": true, the default)", what,
                           "context_length_exceeded")
        return ids[-limit:]

    def encode(self, prompt: str | list[int], truncate: bool, scored: bool = False) -> list[int]:
        """A prompt's ids (text: `Run.encode_prompt`, the rule of `tinylm sample`), fitted to the context.
        A `scored` prompt (echo with logprobs) may keep context + 1 tokens: one forward over its first
        `context` tokens gives the log-probability of every token after the first (what
        lm-evaluation-harness's local-completions model sends with max_length = context + 2)."""
        if isinstance(prompt, list):
            return self.fit(prompt, truncate, extra=int(scored))
        if scored:
            return self.fit(encode_text(self.run.tokenizer, prompt), truncate, extra=1)
        with warnings.catch_warnings():  # <unk> characters and truncation are normal for a server
            warnings.simplefilter("ignore", TinylmWarning)
            try:
                return self.run.encode_prompt(prompt, truncate)
            except ConfigError as e:  # longer than the context with truncate false
                raise APIError(413, _http_hint(str(e)), "prompt", "context_length_exceeded") from None

    def chat_ids(self, model: Model, messages: list[dict[str, str]], max_tokens: int, truncate: bool) -> list[int]:
        """The messages rendered with the model's template and encoded as `Run.chat` does (`Run.chat_ids`)."""
        if model.template is None:
            raise APIError(400, f"the model {model.id!r} has no chat template: fine-tune it on chats (tinylm "
                                "finetune --template NAME), or start the server with --chat-template alpaca|chat|plain",
                           "messages", "no_chat_template")
        with warnings.catch_warnings():  # truncation is normal for a server
            warnings.simplefilter("ignore", TinylmWarning)
            try:
                return self.run.chat_ids(messages, model.template, max_tokens, truncate)
            except ConfigError as e:  # longer than the context with truncate false
                raise APIError(413, _http_hint(str(e)), "messages", "context_length_exceeded") from None

    def submit(self, http: Request, rows: list[Row]) -> tuple[EngineRequest, asyncio.Queue]:
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def on_event(event: Event) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        request = EngineRequest(rows, on_event)
        try:
            self.engine.submit(request)
        except Closing as e:
            raise APIError(503, str(e), code="server_shutting_down",
                           headers={"Retry-After": RETRY_AFTER, "Connection": "close"}) from None
        except QueueFull as e:
            note(http, f"answered 503: the server is busy ({e})")
            raise APIError(503, f"the server is busy ({e}); retry after {RETRY_AFTER} s", code="queue_full",
                           headers={"Retry-After": RETRY_AFTER}) from None
        return request, queue

    def cancel(self, request: EngineRequest) -> None:
        request.cancel()
        self.engine.wake()


# --------------------------------------------------------------------------- response shapes


def _now() -> int:
    return int(time.time())


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _Choice:
    """What has arrived for one choice (one engine row)."""

    def __init__(self, offset: int = 0):
        self.text: list[str] = []
        self.tokens: list[TokenLogprob] = []
        self.offsets: list[int] = []
        self.finish: str | None = None
        self.completion_tokens = 0
        self.prompt_logprobs: list[TokenLogprob] | None = None
        self.emitted = offset  # characters of the choice's text so far (text_offset of the next token)

    def add(self, event: Event) -> None:
        self.offsets += [self.emitted] * len(event.tokens)
        self.text.append(event.text)
        self.tokens += event.tokens
        self.emitted += len(event.text)
        if event.prompt_logprobs is not None:
            self.prompt_logprobs = event.prompt_logprobs
        if event.finish:
            self.finish, self.completion_tokens = event.finish, event.completion_tokens


def _failed(event: Event) -> APIError:
    """The error of a row that the engine ended early (finish "error" or "shutdown")."""
    headers = {"Retry-After": RETRY_AFTER}
    if event.finish == "shutdown":
        headers["Connection"] = "close"
    return APIError(503, event.error or "generation failed", code=CUT_SHORT[event.finish], headers=headers)


def _raise_failed(event: Event) -> None:
    if event.finish in CUT_SHORT:
        raise _failed(event)


class API:
    """Route handlers, holding the service."""

    def __init__(self, service: Service):
        self.s = service
        self.decode_one = functools.lru_cache(maxsize=65536)(lambda t: service.run.tokenizer.decode([t]))
        self.bytes_of = functools.lru_cache(maxsize=65536)(self._token_bytes)

    def _token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for: a byte-level token's own (a part of a character's UTF-8 bytes
        included, so that clients can join them), else its text's UTF-8."""
        try:
            return self.s.run.tokenizer.token_bytes(token)
        except NotImplementedError:
            return self.decode_one(token).encode("utf-8")

    # ------------------------------------------------------------------ logprobs

    def completion_logprobs(self, tokens: list[TokenLogprob], offsets: list[int]) -> dict[str, Any]:
        """The /v1/completions `logprobs` object (a prompt's first token has no log-probability)."""
        return {"tokens": [self.decode_one(t.token) for t in tokens],
                "token_logprobs": [finite(t.logprob) for t in tokens],
                "top_logprobs": [None if t.logprob is None else {self.decode_one(i): finite(lp) for i, lp in t.top}
                                 for t in tokens],
                "text_offset": offsets}

    def chat_logprobs(self, tokens: list[TokenLogprob]) -> dict[str, Any]:
        def entry(token: int, logprob: float) -> dict[str, Any]:
            text = self.decode_one(token)
            return {"token": text, "logprob": finite(logprob), "bytes": list(self.bytes_of(token))}

        return {"content": [{**entry(t.token, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in t.top]}
                            for t in tokens]}

    # ------------------------------------------------------------------ waiting for events

    async def events(self, http: Request, request: EngineRequest, queue: asyncio.Queue) -> AsyncIterator[Event]:
        """The request's events until every row finished; a client that goes away cancels the rest."""
        left = len(request.rows)
        checked = time.monotonic()
        gone = False
        try:
            while left:
                try:
                    event = await asyncio.wait_for(queue.get(), POLL)
                except asyncio.TimeoutError:
                    event = None
                if time.monotonic() - checked >= POLL:  # also while events flow (non-streaming requests)
                    checked = time.monotonic()
                    if await http.is_disconnected():
                        gone = True
                        return
                if event is None:
                    continue
                if event.finish:
                    left -= 1
                yield event
        except asyncio.CancelledError:  # the stream's connection closed (Starlette cancels the stream)
            gone = True
            raise
        finally:
            if left:
                self.s.cancel(request)
                if gone:
                    note(http, f"the connection closed before the response was complete; {left} unfinished "
                               f"sequence(s) cancelled")

    # ------------------------------------------------------------------ /v1/completions

    async def checked(self, http: Request, parse) -> tuple[Any, Model]:
        """The steps every POST route begins with: the key, the body, its checks, the model."""
        self.s.authorize(http)
        req = parse(await self.s.body(http), self.s.limits)
        return req, self.s.model(req.model)

    async def collect(self, http: Request, request: EngineRequest, queue: asyncio.Queue,
                      choices: list[_Choice]) -> None:
        """Every event of a request into its choices (a failed generation becomes a 503)."""
        async for event in self.events(http, request, queue):
            _raise_failed(event)
            choices[event.row].add(event)

    async def completions(self, http: Request) -> Response:
        s = self.s
        req: CompletionRequest
        req, model = await self.checked(http, completion_request)
        sp = req.sampling
        prompts = [s.encode(p, sp.truncate, scored=req.echo and req.logprobs is not None) for p in req.prompts]
        echoes = [(p if isinstance(p, str) else s.run.tokenizer.decode(p)) if req.echo else "" for p in req.prompts]
        if req.beam_search:
            return await self.beam_completions(http, req, model, prompts, echoes)
        rows = [Row(ids, sp.config(i * sp.n + j), model.adapter, req.logprobs,
                    req.logprobs if req.echo and req.logprobs is not None else None)
                for i, ids in enumerate(prompts) for j in range(sp.n)]
        request, queue = s.submit(http, rows)
        cid, created = f"cmpl-{uuid.uuid4().hex}", _now()
        prompt_tokens = sum(map(len, prompts))
        head = {"id": cid, "object": "text_completion", "created": created, "model": model.id}
        echo_of = [echoes[k // sp.n] for k in range(len(rows))]

        if sp.stream:
            return self.stream(self.completion_chunks(http, request, queue, head, echo_of, req, prompt_tokens))

        choices = [_Choice(len(echo_of[k])) for k in range(len(rows))]
        await self.collect(http, request, queue, choices)
        out = []
        for k, c in enumerate(choices):
            choice = {"index": k, "text": echo_of[k] + "".join(c.text), "finish_reason": c.finish, "logprobs": None}
            if req.logprobs is not None:
                tokens = [*(c.prompt_logprobs or []), *c.tokens]
                offsets = [*self._prompt_offsets(c.prompt_logprobs, echo_of[k]), *c.offsets]
                choice["logprobs"] = self.completion_logprobs(tokens, offsets)
            out.append(choice)
        completion = sum(c.completion_tokens for c in choices)
        return JSONResponse({**head, "choices": out, "usage": _usage(prompt_tokens, completion)})

    async def beam_completions(self, http: Request, req: CompletionRequest, model: Model, prompts: list[list[int]],
                               echoes: list[str]) -> Response:
        """use_beam_search: one engine beam row per prompt (`Row.beam_search`); its n best beams, best first,
        are the prompt's choices (what `Run.generate(prompt, beams=best_of, num_return_sequences=n)` gives)."""
        sp = req.sampling
        rows = [Row(ids, sp.config(0), model.adapter, beam_search=True) for ids in prompts]
        request, queue = self.s.submit(http, rows)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": _now(), "model": model.id}
        beams: list[list[Any]] = [[] for _ in rows]
        completion = 0
        async for event in self.events(http, request, queue):
            _raise_failed(event)
            if event.finish:
                beams[event.row], completion = event.beams or [], completion + event.completion_tokens
        out = [{"index": i * sp.n + j, "text": echoes[i] + beam.text, "finish_reason": beam.finish, "logprobs": None}
               for i, found in enumerate(beams) for j, beam in enumerate(found)]
        return JSONResponse({**head, "choices": out, "usage": _usage(sum(map(len, prompts)), completion)})

    def _prompt_offsets(self, prompt: list[TokenLogprob] | None, echo: str) -> list[int]:
        """text_offset of the echoed prompt's tokens: where each token's text starts in `echo` (the
        characters its predecessors complete: tokens inside one UTF-8 character share its offset). A
        prompt cut to the context keeps its last tokens: they are the end of the echoed text."""
        ids = [t.token for t in prompt or []]
        decode = self.s.run.tokenizer.decode

        def chars(n: int) -> int:  # characters the first n tokens complete (a split character only once whole)
            return len(decode(ids[:n]).rstrip("\ufffd")) if n else 0

        start = max(0, len(echo) - chars(len(ids)))
        return [start + chars(i) for i in range(len(ids))]

    async def completion_chunks(self, http: Request, request: EngineRequest, queue: asyncio.Queue,
                                head: dict[str, Any], echo_of: list[str], req: CompletionRequest,
                                prompt_tokens: int) -> AsyncIterator[dict[str, Any]]:
        def chunk(k: int, text: str, finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
            return {**head, "choices": [{"index": k, "text": text, "finish_reason": finish, "logprobs": logprobs}]}

        emitted = [0] * len(echo_of)  # characters of each choice's text so far
        completion = 0
        for k, echo in enumerate(echo_of):
            if echo and req.logprobs is None:  # with logprobs the prompt comes with its event
                emitted[k] = len(echo)
                yield chunk(k, echo)
        finished = [False] * len(echo_of)
        async for event in self.events(http, request, queue):
            completion += len(event.tokens)  # one per generated token (also of a row cut short)
            if event.finish in CUT_SHORT:
                for k in range(len(echo_of)):
                    if not finished[k]:
                        yield chunk(k, event.text if k == event.row else "", "error")
                if req.sampling.include_usage:
                    yield {**head, "choices": [], "usage": _usage(prompt_tokens, completion)}
                yield _failed(event).body()
                return
            k = event.row
            finished[k] = finished[k] or bool(event.finish)
            if event.prompt_logprobs is not None:  # echo with logprobs: the prompt and its log-probabilities
                emitted[k] = len(echo_of[k])
                yield chunk(k, echo_of[k], logprobs=self.completion_logprobs(
                    event.prompt_logprobs, self._prompt_offsets(event.prompt_logprobs, echo_of[k])))
                continue
            logprobs = None
            if req.logprobs is not None and event.tokens:
                logprobs = self.completion_logprobs(event.tokens, [emitted[k]] * len(event.tokens))
            emitted[k] += len(event.text)
            if event.text or event.finish or logprobs:
                yield chunk(k, event.text, event.finish, logprobs)
        if req.sampling.include_usage:
            yield {**head, "choices": [], "usage": _usage(prompt_tokens, completion)}

    # ------------------------------------------------------------------ /v1/chat/completions

    async def chat(self, http: Request) -> Response:
        s = self.s
        req: ChatRequest
        req, model = await self.checked(http, chat_request)
        sp = req.sampling
        ids = s.chat_ids(model, req.messages, sp.max_tokens, sp.truncate)
        stops = model.template.reply_stops(s.run.tokenizer.eot_id is not None)
        rows = [Row(ids, sp.config(j, stops), model.adapter, req.logprobs) for j in range(sp.n)]
        request, queue = s.submit(http, rows)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", _now()
        head = {"id": cid, "object": "chat.completion", "created": created, "model": model.id,
                "system_fingerprint": f"tinylm-{__version__}"}
        if sp.stream:
            return self.stream(self.chat_chunks(http, request, queue, {**head, "object": "chat.completion.chunk"},
                                                req, len(ids)))
        choices = [_Choice() for _ in rows]
        await self.collect(http, request, queue, choices)
        out = [{"index": j, "message": {"role": "assistant", "content": "".join(c.text)}, "finish_reason": c.finish,
                "logprobs": self.chat_logprobs(c.tokens) if req.logprobs is not None else None}
               for j, c in enumerate(choices)]
        completion = sum(c.completion_tokens for c in choices)
        return JSONResponse({**head, "choices": out, "usage": _usage(len(ids), completion)})

    async def chat_chunks(self, http: Request, request: EngineRequest, queue: asyncio.Queue, head: dict[str, Any],
                          req: ChatRequest, prompt_tokens: int) -> AsyncIterator[dict[str, Any]]:
        for j in range(req.sampling.n):
            yield {**head, "choices": [{"index": j, "delta": {"role": "assistant", "content": ""},
                                        "finish_reason": None, "logprobs": None}]}
        completion = 0
        finished = [False] * req.sampling.n
        async for event in self.events(http, request, queue):
            completion += len(event.tokens)
            if event.finish in CUT_SHORT:
                for j in range(req.sampling.n):
                    if not finished[j]:
                        delta = {"content": event.text} if j == event.row and event.text else {}
                        yield {**head, "choices": [{"index": j, "delta": delta, "finish_reason": "error",
                                                    "logprobs": None}]}
                if req.sampling.include_usage:
                    yield {**head, "choices": [], "usage": _usage(prompt_tokens, completion)}
                yield _failed(event).body()
                return
            finished[event.row] = finished[event.row] or bool(event.finish)
            logprobs = self.chat_logprobs(event.tokens) if req.logprobs is not None and event.tokens else None
            if event.text or logprobs:
                yield {**head, "choices": [{"index": event.row, "delta": {"content": event.text},
                                            "finish_reason": None, "logprobs": logprobs}]}
            if event.finish:
                yield {**head, "choices": [{"index": event.row, "delta": {}, "finish_reason": event.finish,
                                            "logprobs": None}]}
        if req.sampling.include_usage:
            yield {**head, "choices": [], "usage": _usage(prompt_tokens, completion)}

    @staticmethod
    def stream(chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
        async def sse() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                yield b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ the rest

    def list_models(self, http: Request) -> dict[str, Any]:
        self.s.authorize(http)
        return {"object": "list", "data": [self.model_card(m) for m in self.s.models.values()]}

    def get_model(self, http: Request, model_id: str) -> dict[str, Any]:
        self.s.authorize(http)
        return self.model_card(self.s.model(model_id))

    def model_card(self, m: Model) -> dict[str, Any]:
        return {"id": m.id, "object": "model", "created": m.created, "owned_by": "tinylm",
                "context_length": self.s.context, "chat": m.template is not None}

    def health(self) -> dict[str, Any]:
        running, waiting = self.s.engine.load
        return {"status": "ok", "models": list(self.s.models), "running": running, "waiting": waiting,
                "max_batch": self.s.cfg.max_batch, "steps": self.s.engine.steps}


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _http_hint(message: str) -> str:
    """A Python API message's hint in the request body's terms (truncate=True -> "truncate": true)."""
    return message.replace("(truncate=True)", "(\"truncate\": true, the default)")


class _InternalErrors:
    """ASGI middleware: an unexpected exception in a handler becomes a 500 in the OpenAI error shape,
    reported in one line on the console, and the connection stays usable (Starlette's own handler for
    `Exception` answers too, but then re-raises: a traceback in the log and a dropped connection).
    Once a response has started (a stream), the exception goes on up as before."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as e:
            if started:
                raise
            console.print(f"[red]internal error[/] on {scope.get('method')} {scope.get('path')}: "
                          f"{type(e).__name__}: {e}")
            await _error_response(APIError(500, "internal server error", code="internal_error"))(scope, receive, send)


def create_app(run_dir: str | Path, config: ServeConfig | None = None, **options: Any) -> FastAPI:
    """The ASGI app serving `run_dir` (mount it, or run it with uvicorn). `options` are ServeConfig
    fields (max_batch, max_queue, max_tokens, max_body, api_key, model_name, chat_template, adapter,
    checkpoint, device, dtype). Loads the model now (errors are one-line TinylmErrors); the engine's
    thread runs while the app's lifespan does."""
    cfg = ServeConfig(**{**(vars(config) if config else {}), **options}).validate()
    service = Service(run_dir, cfg)
    api = API(service)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.engine.start()
        try:
            yield
        finally:
            service.engine.stop()

    app = FastAPI(title="tinylm", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, redirect_slashes=False)  # a redirect would point at whatever Host was sent
    app.state.service = service

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return _error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        hint = (f"did you mean {path.rstrip('/')} (without the final slash)?" if path.rstrip("/") in ROUTES
                else "see GET /v1/models, POST /v1/completions, POST /v1/chat/completions")
        message = {404: f"no route {path}; {hint}", 405: f"{request.method} is not allowed on {path}"}
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return _error_response(APIError(e.status_code, message.get(e.status_code, str(e.detail)), code=code))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return _error_response(APIError(400, "invalid request", code="invalid_value"))

    app.add_middleware(_InternalErrors)
    if cfg.cors_origins:  # off unless asked for: pages of these origins may call the API
        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    app.add_middleware(_Guard, hosts=service.hosts, cors_origins=cfg.cors_origins)  # the outermost

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        return HTMLResponse(playground_html())

    app.get("/health")(api.health)
    app.get("/v1/models")(api.list_models)
    app.get("/v1/models/{model_id:path}")(api.get_model)
    app.post("/v1/completions")(api.completions)
    app.post("/v1/chat/completions")(api.chat)
    return app


@functools.lru_cache(maxsize=1)
def playground_html() -> str:
    """The playground page shipped in the package (serving/playground.html)."""
    return (resources.files("tinylm.serving") / "playground.html").read_text(encoding="utf-8")


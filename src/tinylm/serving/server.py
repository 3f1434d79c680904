"""Running the app: `tinylm serve` binds the socket itself (a port in use is a one-line error before
the model loads), warns when it listens beyond loopback without an API key, then hands the socket to
uvicorn, with tinylm's connection deadlines and shutdown.

    ServeConfig ──► bind(host, port) ──► create_app(run_dir, cfg) ──► Server(app, cfg).run(sockets=[sock])

    connections (`Protocol`, uvicorn's httptools protocol with deadlines): a request's headers must
    arrive within --header-timeout of the connection being ready for it (else 408, or a quiet close
    when nothing came); a body nobody reads within --body-timeout (the app itself answers 408 to a
    body it waits for); a client that takes none of its response for --write-timeout is disconnected
    (its rows are cancelled). Each such close is one console line.

    shutdown (Ctrl-C, SIGTERM; `Server.shutdown`): stop listening, close idle connections, let the
    engine finish running requests for --shutdown-timeout (new ones get 503), then end the rest in the
    protocol's way (`Engine.close`: finish_reason "error", an error event, [DONE]), wait for their
    last bytes, drop connections still open, and only then hand over to uvicorn's own shutdown (which
    then has nothing left to cancel: no tracebacks).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tinylm.config import ServeConfig
from tinylm.console import console, warn
from tinylm.errors import ConfigError
from tinylm.serving.app import note
from tinylm.serving.protocol import APIError

LAST_BYTES = 2.0  # seconds after the shutdown deadline for the streams' last events to be written


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port), or a one-line ConfigError."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise ConfigError(f"cannot listen on {host!r}: {e.strerror}; give an address such as 127.0.0.1 "
                          "with --host") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use; stop what listens there or choose another "
                              "port with --port (0 picks a free one)") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _timeout_response(message: str) -> bytes:
    """A whole HTTP 408 response with an OpenAI-shaped error body, closing the connection."""
    body = json.dumps(APIError(408, message, code="request_timeout").body()).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))


class Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines per connection (the `ServeConfig` is the uvicorn
    config's `serve`): one for reading (the next request's headers, then a body nobody reads), one for
    writing (a client that takes none of its response)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any):
        super().__init__(config, *args, **kwargs)
        self.limits: ServeConfig = config.serve
        self._read_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._partial = False  # bytes of the next request have arrived

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._read_deadline(self.limits.header_timeout, self._headers_late)

    def _read_deadline(self, seconds: float | None, handler: Any = None) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._read_timer = self.loop.call_later(seconds, handler) if seconds is not None else None

    def _idle(self) -> bool:
        """No request is being handled: bytes that arrive belong to the next request's headers."""
        return self.cycle is None or self.cycle.response_complete

    def data_received(self, data: bytes) -> None:
        if data and self._idle():
            self._partial = True
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._partial = False
        # the app answers 408 to a body it waits for (--body-timeout); this one closes a body nobody reads
        self._read_deadline(self.limits.body_timeout + 1.0, self._body_late)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if not self._idle():  # (an answer sent before the body ended already set the next deadline)
            self._read_deadline(None)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._read_deadline(self.limits.header_timeout, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._read_deadline(None)
        if self._write_timer is not None:
            self._write_timer.cancel()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.write_timeout, self._write_late)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _headers_late(self) -> None:
        self._read_timer = None
        if self.transport.is_closing() or not self._idle():
            return
        if not self._partial:  # an idle connection: closed quietly, as keep-alive's timeout does
            self.transport.close()
            return
        seconds = f"{self.limits.header_timeout:g} s"
        note(self.client, f"its request headers did not arrive within {seconds} (--header-timeout); answered 408 "
                          "and closed the connection")
        self.transport.write(_timeout_response(f"the request headers did not arrive within {seconds}; send them "
                                               "at once"))
        self.transport.close()

    def _body_late(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing():
            note(self.client, f"its request body did not arrive within {self.limits.body_timeout:g} s "
                              "(--body-timeout); closed the connection")
            self.transport.abort()

    def _write_late(self) -> None:
        self._write_timer = None
        if self.flow.write_paused:  # (also a closing transport: its buffer would never drain)
            note(self.client, f"took none of its response for {self.limits.write_timeout:g} s (--write-timeout); "
                              "closed the connection")
            self.transport.abort()


class Server(uvicorn.Server):
    """uvicorn's server for `create_app`'s app (its `state.service` holds the engine), with tinylm's
    connection deadlines (`Protocol`) and shutdown (the module's docstring). `.run(sockets=[sock])`."""

    def __init__(self, app: Any, cfg: ServeConfig):
        config = uvicorn.Config(app, log_level="warning", http=Protocol, timeout_graceful_shutdown=LAST_BYTES)
        config.serve = cfg
        super().__init__(config)
        self.app, self.cfg = app, cfg

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        engine = self.app.state.service.engine
        for server in self.servers:  # no new connections; idle ones close now, busy ones after their response
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        running, waiting = engine.load
        if running or waiting:
            console.print(f"shutting down: {running} sequence(s) running and {waiting} waiting may go on for "
                          f"{self.cfg.shutdown_timeout:g} s (--shutdown-timeout)", markup=False)
        ended = engine.ended
        engine.close(self.cfg.shutdown_timeout)
        deadline = time.monotonic() + self.cfg.shutdown_timeout + LAST_BYTES
        while self.server_state.connections and time.monotonic() < deadline and not self.force_exit:
            await asyncio.sleep(0.02)
        if engine.ended > ended:
            console.print(f"shutting down: ended {engine.ended - ended} unfinished sequence(s); their clients got "
                          "finish_reason \"error\" with an error event, or a 503", markup=False)
        for connection in list(self.server_state.connections):  # clients that take nothing more
            note(connection.client, "its connection was still open at shutdown; closed it")
            connection.transport.abort()
        await super().shutdown(sockets)


class _Stopped(Exception):
    """SIGTERM arrived (after uvicorn's graceful shutdown)."""


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped


def serve(run_dir: str | Path, cfg: ServeConfig) -> None:
    """Serve `run_dir` until Ctrl-C (see create_app for the options)."""
    from tinylm.run import read_config
    from tinylm.serving.app import create_app

    cfg.validate()
    read_config(run_dir)  # a missing or broken run directory: one line, before anything else
    sock = bind(cfg.host, cfg.port)
    try:
        app = create_app(run_dir, cfg)
        if not is_loopback(cfg.host) and not (cfg.api_key or os.environ.get("TINYLM_API_KEY")):
            warn(f"listening on {cfg.host} without an API key: anyone who can reach this machine can use the "
                 "model; set --api-key or TINYLM_API_KEY")
        if not is_loopback(cfg.host) and not cfg.allowed_hosts:
            what = "IP addresses" if app.state.service.hosts.all_addresses else repr(cfg.host)
            console.print(f"answering requests sent to localhost and {what}; add the other names clients use with "
                          "--allowed-host NAME", markup=False)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        models = ", ".join(app.state.service.models)
        console.print(f"serving {models} on http://{shown}:{port}  (playground: /, OpenAI API: /v1; Ctrl-C stops)")
        print(f"http://{shown}:{port}", flush=True)
        uv = Server(app, app.state.service.cfg)
        # uvicorn shuts down gracefully on SIGINT / SIGTERM, then re-raises the signal: Ctrl-C arrives as
        # KeyboardInterrupt, and SIGTERM (kill, systemd, docker stop) as _Stopped through this handler
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_stopped) if main_thread else None
        try:
            uv.run(sockets=[sock])
        except (KeyboardInterrupt, _Stopped):
            pass
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
        console.print("server stopped")
    finally:
        sock.close()

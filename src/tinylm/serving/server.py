"""Running the app: `tinylm serve` binds the socket itself (a port in use is a one-line error before
the model loads), warns when it listens beyond loopback without an API key, then hands the socket to
uvicorn.

    ServeConfig ──► bind(host, port) ──► create_app(run_dir, cfg) ──► uvicorn.Server.run(sockets=[sock])
"""

from __future__ import annotations

import errno
import ipaddress
import os
import signal
import socket
import threading
from pathlib import Path

from tinylm.config import ServeConfig
from tinylm.console import console, warn
from tinylm.errors import ConfigError


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


class _Stopped(Exception):
    """SIGTERM arrived (after uvicorn's graceful shutdown)."""


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped


def serve(run_dir: str | Path, cfg: ServeConfig) -> None:
    """Serve `run_dir` until Ctrl-C (see create_app for the options)."""
    import uvicorn

    from tinylm.rundir import read_config
    from tinylm.serving.app import create_app

    cfg.validate()
    read_config(run_dir)  # a missing or broken run directory: one line, before anything else
    sock = bind(cfg.host, cfg.port)
    try:
        app = create_app(run_dir, cfg)
        if not is_loopback(cfg.host) and not (cfg.api_key or os.environ.get("TINYLM_API_KEY")):
            warn(f"listening on {cfg.host} without an API key: anyone who can reach this machine can use the "
                 "model; set --api-key or TINYLM_API_KEY")
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        models = ", ".join(app.state.service.models)
        console.print(f"serving {models} on http://{shown}:{port}  (playground: /, OpenAI API: /v1; Ctrl-C stops)")
        print(f"http://{shown}:{port}", flush=True)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3))
        # uvicorn shuts down gracefully on SIGINT / SIGTERM, then re-raises the signal: Ctrl-C arrives as
        # KeyboardInterrupt, and SIGTERM (kill, systemd, docker stop) as _Stopped through this handler
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_stopped) if main_thread else None
        try:
            server.run(sockets=[sock])
        except (KeyboardInterrupt, _Stopped):
            pass
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
        console.print("server stopped")
    finally:
        sock.close()

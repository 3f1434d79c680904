"""A real tinylm server (`tinylm.serving.server.Server`: uvicorn with tinylm's deadlines and
shutdown) on a free loopback port, in a background thread, for the serving tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Iterator

from tinylm.serving.server import Server, bind


@contextlib.contextmanager
def running(app, sndbuf: int | None = None) -> Iterator[str]:
    """Serve `app` on 127.0.0.1:<free port>; yields the base URL and stops the server after (its
    shutdown, as on Ctrl-C). `sndbuf`: the send buffer of accepted connections, in bytes."""
    sock = bind("127.0.0.1", 0)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)  # accepted sockets inherit it
    server = Server(app, app.state.service.cfg)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()

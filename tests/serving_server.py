"""A real uvicorn server on a free loopback port, in a background thread, for the serving tests."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator

import uvicorn

from tinylm.serving.server import bind


@contextlib.contextmanager
def running(app) -> Iterator[str]:
    """Serve `app` on 127.0.0.1:<free port>; yields the base URL and stops the server after."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
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

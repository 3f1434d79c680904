"""Serving a run over HTTP: an OpenAI-compatible API with continuous batching and a browser playground.

    protocol.py   request bodies -> checked requests, errors in the OpenAI shape (pydantic)
    app.py        over the generation engine (`Run.engine()`: rows join and leave between decode steps,
                  tinylm.generation.engine), which owns the decode loop; FastAPI routes (completions, chat completions, models, health, the playground), SSE;
                  which Host / Origin / Content-Type it answers; how every request ends
    server.py     `tinylm serve`: bind the port, warn without a key beyond loopback, run uvicorn with
                  header / body / write deadlines and a shutdown that ends streams in the protocol's way
    playground.html   the page at /: completion and chat views on the public API (no CDN, no build)

    create_app(run_dir, **options) -> FastAPI      serve(run_dir, ServeConfig)

Needs the `serve` extra (fastapi, uvicorn).
"""

from __future__ import annotations

from tinylm.serving.app import create_app
from tinylm.serving.server import serve

__all__ = ["create_app", "serve"]

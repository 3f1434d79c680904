"""How requests and connections end on `tinylm serve`: clients that send slowly or nothing, that go
away mid-body, that take none of their response, and the server shutting down while streams run.
Every way ends in the protocol's way (a response, or a stream with finish reasons, an error event and
`data: [DONE]`), frees its rows, is bounded in time and is one console line for what it is. Driven
by raw sockets and the official `openai` client against real servers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from serving_server import running

from tinylm.serving import create_app

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]

TIMEOUT = 0.5  # the header, body and write timeouts of the servers below


def health(base: str) -> dict:
    return httpx.get(f"{base}/health", timeout=30).json()


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def connect(base: str, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", int(base.rsplit(":", 1)[1])))
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def request_head(path: str, body: bytes, length: int | None = None) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n\r\n").encode() + body


def json_error(response: bytes, status: int, code: str) -> dict:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), response[:300]
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"] and set(error) == {"message", "type", "param", "code"}
    return error


@pytest.fixture(scope="module")
def quick(trained_run: Path):
    """A server with 0.5 s header, body and write timeouts; small send buffers (slow readers show at once)."""
    app = create_app(trained_run, model_name="tiny", dtype="float32", max_tokens=100_000, header_timeout=TIMEOUT,
                     body_timeout=TIMEOUT, write_timeout=TIMEOUT)
    with running(app, sndbuf=4096) as base:
        yield base


def test_slow_and_silent_clients_are_closed_within_the_timeouts_while_others_are_served(quick: str, capsys):
    """Slowloris: 40 connections that send part of their headers (some a byte at a time, forever),
    20 that send nothing and 20 whose body never ends. Each is closed within the timeouts (408 with an
    OpenAI error when part of a request came, silently when nothing did) while a valid request is
    answered; each 408 is one console line."""
    capsys.readouterr()
    partial = [connect(quick) for _ in range(40)]
    silent = [connect(quick) for _ in range(20)]
    bodies = [connect(quick) for _ in range(20)]
    start = time.monotonic()
    for sock in partial:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    for sock in bodies:
        sock.sendall(request_head("/v1/completions", b'{"model": "tiny", "pro', length=500))
    stop = threading.Event()

    def trickle(sock: socket.socket) -> None:  # a byte every 0.1 s: uvicorn's keep-alive timer never fires
        while not stop.is_set():
            try:
                sock.send(b"X")
            except OSError:
                return
            time.sleep(0.1)

    tricklers = [threading.Thread(target=trickle, args=(sock,), daemon=True) for sock in partial[:10]]
    for t in tricklers:
        t.start()
    ok = httpx.post(f"{quick}/v1/completions", json={"model": "tiny", "prompt": "A", "max_tokens": 3}, timeout=30)
    assert ok.status_code == 200 and len(ok.json()["choices"][0]["text"]) == 3

    for sock in partial:
        error = json_error(read_all(sock), 408, "request_timeout")
        assert "headers did not arrive within 0.5 s" in error["message"]
    for sock in silent:
        assert read_all(sock) == b""  # nothing sent: closed quietly, as an idle keep-alive connection
    for sock in bodies:
        error = json_error(read_all(sock), 408, "request_timeout")
        assert "body did not arrive within 0.5 s" in error["message"]
    assert time.monotonic() - start < 10  # all bounded (0.5 s each; slack for a loaded machine)
    stop.set()
    for sock in partial + silent + bodies:
        sock.close()
    err = capsys.readouterr().err
    assert err.count("did not arrive within 0.5 s (--header-timeout); answered 408") == 40
    assert err.count("did not arrive within 0.5 s (--body-timeout); answered 408") == 20
    assert "Traceback" not in err and "internal error" not in err
    assert health(quick)["running"] == 0


def test_a_client_that_goes_away_mid_body_is_noted_as_such(quick: str, capsys):
    capsys.readouterr()
    sock = connect(quick)
    part = b'{"model": "tiny", "prompt": "ABC'
    sock.sendall(request_head("/v1/completions", part, length=200))
    time.sleep(0.1)
    sock.close()
    err = ""
    deadline = time.monotonic() + 5
    while "request body" not in err and time.monotonic() < deadline:
        time.sleep(0.02)
        err += capsys.readouterr().err
    assert (f"POST /v1/completions: the client disconnected after {len(part)} bytes of its request body, before "
            "its end") in err
    assert "internal error" not in err and "Traceback" not in err
    assert httpx.get(f"{quick}/health").status_code == 200


def test_a_client_that_takes_none_of_its_stream_is_disconnected_and_its_row_freed(quick: str, capsys):
    """A client that stops reading: once the server's buffers are full nothing can be written for
    --write-timeout, so the connection is closed and the row cancelled (not generated to its end)."""
    capsys.readouterr()
    sock = connect(quick, rcvbuf=4096)
    body = json.dumps({"model": "tiny", "prompt": "A", "max_tokens": 100_000, "stream": True,
                       "logprobs": 20}).encode()
    sock.sendall(request_head("/v1/completions", body))
    wait_for(lambda: health(quick)["running"] == 1, 10)
    wait_for(lambda: health(quick)["running"] == 0, 20)
    steps = health(quick)["steps"]
    time.sleep(0.3)
    assert health(quick)["steps"] == steps  # nothing decodes for it any more
    sock.close()
    err = capsys.readouterr().err
    assert "took none of its response for 0.5 s (--write-timeout); closed the connection" in err
    assert "the connection closed before the response was complete; 1 unfinished sequence(s) cancelled" in err
    assert "Traceback" not in err


def sse_lines(response: httpx.Response) -> list[str]:
    return [line for line in response.iter_lines() if line]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_ends_every_running_request_in_the_protocols_way(trained_run: Path, stop: int):
    """SIGTERM (kill, docker stop) or Ctrl-C while requests run: a short stream finishes normally
    within --shutdown-timeout; the others end then: each choice of a stream with finish_reason "error",
    an error event (code server_shutting_down) and `data: [DONE]`, a whole response as a 503; the
    process exits 0 soon after, without tracebacks."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tinylm", "serve", str(trained_run), "--port", "0", "--dtype",
                             "float32", "--model-name", "tiny", "--chat-template", "plain", "--max-tokens", "100000",
                             "--shutdown-timeout", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    results: dict[str, object] = {}
    try:
        base = proc.stdout.readline().strip()
        assert base.startswith("http://127.0.0.1:"), proc.stderr.read()
        client = OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=60)
        long = {"model": "tiny", "prompt": "A", "max_tokens": 100_000}

        def raw_stream() -> None:  # two choices, read as bytes
            with httpx.stream("POST", f"{base}/v1/completions", json={**long, "n": 2, "stream": True,
                                                                       "stream_options": {"include_usage": True}},
                              timeout=60) as response:
                results["raw"] = sse_lines(response)

        def chat_stream() -> None:
            chunks = []
            try:
                for chunk in client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                                            max_tokens=100_000, stream=True):
                    chunks.append(chunk)
            except openai.APIError as e:
                results["chat_error"] = e
            results["chat"] = chunks

        def whole() -> None:
            try:
                client.completions.create(**long)
            except openai.APIStatusError as e:
                results["whole"] = e

        threads = [threading.Thread(target=f) for f in (raw_stream, chat_stream, whole)]
        for t in threads:
            t.start()
        wait_for(lambda: httpx.get(f"{base}/health").json()["running"] == 4, 30)
        with httpx.stream("POST", f"{base}/v1/completions", json={"model": "tiny", "prompt": "B", "max_tokens": 100,
                                                                   "stream": True}) as short:
            lines = short.iter_lines()
            next(lines)  # it runs
            proc.send_signal(stop)
            signalled = time.monotonic()
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]" and json.loads(rest[-2][6:])["choices"][0]["finish_reason"] == "length"
        for t in threads:
            t.join(30)
        assert proc.wait(30) == 0
        assert time.monotonic() - signalled < 2 + 5  # --shutdown-timeout, then the last bytes
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    raw = results["raw"]
    assert raw[-1] == "data: [DONE]"
    error = json.loads(raw[-2][6:])["error"]
    assert error["code"] == "server_shutting_down" and "shutting down" in error["message"]
    assert json.loads(raw[-3][6:])["usage"]["completion_tokens"] > 0
    finishes = [c["choices"][0] for c in map(lambda line: json.loads(line[6:]), raw[:-3])
                if c["choices"][0]["finish_reason"]]
    assert sorted((c["index"], c["finish_reason"]) for c in finishes) == [(0, "error"), (1, "error")]

    assert results["chat"][-1].choices[0].finish_reason == "error"  # the openai client: the finish, then the error
    assert results["chat_error"].code == "server_shutting_down"
    assert results["whole"].status_code == 503 and results["whole"].code == "server_shutting_down"
    err = proc.stderr.read()
    assert "sequence(s) running" in err and "ended 4 unfinished sequence(s)" in err
    assert "Traceback" not in err and "Exception" not in err and "server stopped" in err

"""Web pages must not drive a local `tinylm serve`: the requests a page of another site can make
(a "simple" cross-origin POST with a text/plain or form body, and anything through DNS rebinding,
which sends the attacker's name as Host) are refused, sent as raw bytes; the official `openai`
client, the playground's own requests and every loopback name keep working; allowed hosts and CORS
origins are the operator's choice."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from serving_server import running

from tinylm.serving import create_app

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]

BODY = json.dumps({"model": "tiny", "prompt": "A", "max_tokens": 2}).encode()


def raw(base: str, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send one request as bytes (`head`: request line and headers, without Content-Length);
    returns the status, the headers (lower-case names) and the body."""
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        length = f"Content-Length: {len(body)}\r\n" if body else ""
        sock.sendall(f"{head}\r\n{length}Connection: close\r\n\r\n".encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    top, _, payload = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, payload


def error_code(payload: bytes) -> str:
    error = json.loads(payload)["error"]
    assert set(error) == {"message", "type", "param", "code"} and "\n" not in error["message"]
    return error["code"]


@pytest.fixture(scope="module")
def local(trained_run: Path):
    """The default: loopback, no API key, no CORS."""
    with running(create_app(trained_run, model_name="tiny", dtype="float32")) as base:
        yield base


def steps(base: str) -> int:
    return httpx.get(f"{base}/health").json()["steps"]


def test_requests_a_web_page_can_forge_are_refused(local: str):
    port = local.rsplit(":", 1)[1]
    before = steps(local)
    attacker = "Origin: https://attacker.example"
    # a "simple" cross-origin POST (no preflight): text/plain, a form, or no Content-Type
    for kind in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x"):
        status, headers, payload = raw(local, f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                              f"{attacker}\r\nContent-Type: {kind}", BODY)
        assert status == 403 and error_code(payload) == "origin_not_allowed"
        assert "access-control-allow-origin" not in headers
        status, _, payload = raw(local, f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                        f"Content-Type: {kind}", BODY)  # (Origin left out): not JSON
        assert status == 415 and error_code(payload) == "unsupported_media_type"
    status, _, payload = raw(local, f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}", BODY)
    assert status == 415
    status, _, payload = raw(local, f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: null\r\n"
                                    "Content-Type: application/json", BODY)  # a sandboxed frame, a file:// page
    assert status == 403 and error_code(payload) == "origin_not_allowed"
    # the preflight a page needs for a JSON body gets no CORS permission
    status, headers, _ = raw(local, f"OPTIONS /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{attacker}\r\n"
                                    "Access-Control-Request-Method: POST\r\n"
                                    "Access-Control-Request-Headers: content-type")
    assert status == 405 and not any(name.startswith("access-control-") for name in headers)
    # DNS rebinding: the attacker's name, now pointing at 127.0.0.1, is the Host (same-origin for the page)
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.attacker.example", "localhost.evil",
                 "attacker.example.", "xn--80ak6aa92e.com", "[::1].attacker", "127.0.0.1:99999", "1.2.3.4.5"):
        for method, path, extra, body in (("GET", "/", "", b""), ("GET", "/v1/models", "", b""),
                                          ("GET", "/health", "", b""),
                                          ("POST", "/v1/completions", "\r\nContent-Type: application/json", BODY)):
            status, _, payload = raw(local, f"{method} {path} HTTP/1.1\r\nHost: {host}{extra}", body)
            assert status == 403 and error_code(payload) == "host_not_allowed", (host, path)
    status, _, payload = raw(local, "GET /v1/models HTTP/1.1\r\nHost: localhost\r\nHost: attacker.example")
    assert status == 403  # two Host headers: refused
    status, _, payload = raw(local, "GET /v1/models HTTP/1.0")  # HTTP/1.0 without a Host
    assert status == 400 and error_code(payload) == "missing_host"
    assert steps(local) == before  # nothing was generated


def test_loopback_names_the_playground_and_the_openai_client_keep_working(local: str):
    port = local.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost", "LOCALHOST.",
                 f"app.localhost:{port}", "127.0.0.2"):
        status, _, payload = raw(local, f"GET /v1/models HTTP/1.1\r\nHost: {host}")
        assert status == 200 and json.loads(payload)["data"][0]["id"] == "tiny", host
    # what Chromium sends from the playground page (same origin): allowed
    status, _, payload = raw(local, f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                    f"Origin: http://127.0.0.1:{port}\r\nSec-Fetch-Site: same-origin\r\n"
                                    "Content-Type: application/json", BODY)
    assert status == 200 and len(json.loads(payload)["choices"][0]["text"]) == 2
    status, _, payload = raw(local, f"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost:{port}\r\n"
                                    f"Origin: http://localhost:{port}\r\nContent-Type: application/json; charset=utf-8",
                             BODY)
    assert status == 400 and error_code(payload) != "unsupported_media_type"  # JSON with a charset is JSON
    for base in (local, local.replace("127.0.0.1", "localhost")):
        client = OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=60)
        assert client.completions.create(model="tiny", prompt="A", max_tokens=3).usage.completion_tokens == 3
    assert "tinylm playground" in httpx.get(local.replace("127.0.0.1", "localhost") + "/").text


def test_a_final_slash_is_a_404_naming_the_route_not_a_redirect(local: str):
    port = local.rsplit(":", 1)[1]
    for method, path in (("POST", "/v1/completions/"), ("POST", "/v1/chat/completions/"), ("GET", "/v1/models/"),
                         ("GET", "/health/")):
        status, headers, payload = raw(local, f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                              "Content-Type: application/json", BODY if method == "POST" else b"")
        if path == "/v1/models/":  # the route of one model, with an empty id
            assert status == 404 and error_code(payload) == "model_not_found"
            continue
        assert status == 404 and "location" not in headers and error_code(payload) == "not_found"
        assert f"did you mean {path.rstrip('/')}" in json.loads(payload)["error"]["message"]


def test_allowed_hosts_and_cors_origins_are_the_operators_choice(trained_run: Path):
    app = create_app(trained_run, model_name="tiny", dtype="float32", host="0.0.0.0",
                     allowed_hosts=["models.example", ".lan"], cors_origins=["https://app.example"])
    with running(app) as base:
        for host, status in (("models.example", 200), ("models.example:8000", 200), ("box.lan", 200), ("lan", 200),
                             ("192.168.1.7:8000", 200), ("[fe80::1]:8000", 200),  # any address of a machine
                             ("localhost", 200), ("other.example", 403), ("models.example.evil", 403),
                             ("evillan", 403)):
            assert raw(base, f"GET /v1/models HTTP/1.1\r\nHost: {host}")[0] == status, host
        status, headers, _ = raw(base, "OPTIONS /v1/completions HTTP/1.1\r\nHost: models.example\r\n"
                                       "Origin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n"
                                       "Access-Control-Request-Headers: content-type, authorization")
        assert status == 200 and headers["access-control-allow-origin"] == "https://app.example"
        assert "content-type" in headers["access-control-allow-headers"].lower()
        status, headers, payload = raw(base, "POST /v1/completions HTTP/1.1\r\nHost: models.example\r\n"
                                             "Origin: https://app.example\r\nContent-Type: application/json", BODY)
        assert status == 200 and headers["access-control-allow-origin"] == "https://app.example"
        status, headers, payload = raw(base, "POST /v1/completions HTTP/1.1\r\nHost: models.example\r\n"
                                             "Origin: https://attacker.example\r\nContent-Type: application/json", BODY)
        assert status == 403 and "access-control-allow-origin" not in headers
        assert "--cors-origin https://attacker.example" in json.loads(payload)["error"]["message"]
    with running(create_app(trained_run, model_name="tiny", dtype="float32", allowed_hosts=["*"])) as base:
        assert raw(base, "GET /v1/models HTTP/1.1\r\nHost: anything.example")[0] == 200

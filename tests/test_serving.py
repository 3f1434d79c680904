"""`tinylm serve` end to end: a real uvicorn server on a free loopback port, driven by the official
`openai` client (and by raw HTTP for what no client library would send)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

import tinylm
from serving_server import running
from tinylm.chat.templates import get_template
from tinylm.cli import main
from tinylm.serving import create_app
from tinylm.serving.server import bind, is_loopback

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]

KEY = "sk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def url(trained_run: Path):
    # float32: the offline references below run in float32 too (see "Exactness" in generation/engine.py)
    app = create_app(trained_run, model_name="tiny", api_key=KEY, chat_template="plain", max_batch=20,
                     max_tokens=5000, max_body=1 << 16, dtype="float32")
    with running(app) as base:
        yield base


@pytest.fixture
def client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def run(trained_run: Path):
    return tinylm.load(trained_run, dtype="float32")


def health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=30).json()


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in response.text
    if code:
        assert error["code"] == code
    return error


# --------------------------------------------------------------------------- basics


def test_models_health_keys_and_the_playground_page(url: str, client: OpenAI):
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").owned_by == "tinylm"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
    assert e.value.body["code"] == "model_not_found" and "tiny" in e.value.body["message"]

    wrong = OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model="tiny", prompt="x", max_tokens=1)
    assert_error(httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x"}), 401, "invalid_api_key")
    assert_error(httpx.get(f"{url}/v1/models", headers={"Authorization": "Basic " + KEY}), 401)

    assert health(url)["status"] == "ok"  # no key needed for health and the page
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "tinylm playground" in page.text and "<script" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere


def test_a_greedy_completion_equals_tinylm_sample(client: OpenAI, trained_run: Path, capsys):
    prompt = "HAMLET:\n"
    assert main(["sample", str(trained_run), "--prompt", prompt, "--max-new-tokens", "40", "--temperature", "0",
                 "--dtype", "float32"]) == 0
    offline = capsys.readouterr().out
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=40, temperature=0)
    assert offline == prompt + r.choices[0].text + "\n"
    assert r.choices[0].finish_reason == "length" and r.object == "text_completion" and r.model == "tiny"
    assert r.usage.prompt_tokens == len(prompt) and r.usage.completion_tokens == 40
    assert r.usage.total_tokens == 40 + len(prompt)


def test_choices_seeds_echo_logprobs_and_stop_strings(client: OpenAI, run):
    prompts = ["ROMEO:\n", "First Citizen:\n"]
    r = client.completions.create(model="tiny", prompt=prompts, n=3, seed=11, max_tokens=12, temperature=1.0)
    assert [c.index for c in r.choices] == list(range(6))
    for c in r.choices:  # choice k of prompt i uses seed + k (k counts over all prompts' choices)
        assert c.text == run.generate(prompts[c.index // 3], seed=11 + c.index, temperature=1.0, max_new_tokens=12)
    assert r.usage.completion_tokens == 6 * 12

    r = client.completions.create(model="tiny", prompt="KING:", max_tokens=6, temperature=0, echo=True, logprobs=3)
    c = r.choices[0]
    assert c.text.startswith("KING:") and len(c.text) == len("KING:") + 6
    lp = c.logprobs
    assert lp.tokens == list(c.text) and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.text_offset == list(range(len(c.text)))
    for token, logprob, top in zip(lp.tokens[5:], lp.token_logprobs[5:], lp.top_logprobs[5:], strict=True):
        assert len(top) <= 3 and logprob <= 0 and top[token] == logprob == max(top.values())  # greedy: the top
    assert all(x is None or x <= 0 for x in lp.token_logprobs)

    free = client.completions.create(model="tiny", prompt="KING:", max_tokens=40, seed=3, temperature=1.0)
    text = free.choices[0].text
    stop = text[8:10]
    r = client.completions.create(model="tiny", prompt="KING:", max_tokens=40, seed=3, temperature=1.0,
                                  stop=[stop, "zzzz"])
    assert r.choices[0].text == text[:text.index(stop)] and r.choices[0].finish_reason == "stop"


def test_streaming_completions_and_chats_equal_their_whole_answers(url: str, client: OpenAI):
    args = dict(model="tiny", prompt="JULIET:\n", max_tokens=30, seed=8, temperature=0.9, top_p=0.9,
                extra_body={"top_k": 20, "min_p": 0.01, "repetition_penalty": 1.1})
    whole = client.completions.create(**args).choices[0].text
    chunks = list(client.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 30 and len({c.id for c in chunks}) == 1

    with httpx.stream("POST", f"{url}/v1/completions", json={**{k: v for k, v in args.items() if k != "extra_body"},
                                                             "stream": True}, headers=AUTH) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    assert all(json.loads(line[6:])["object"] == "text_completion" for line in lines[:-1])

    many = dict(model="tiny", prompt="JULIET:\n", max_tokens=15, seed=8, temperature=1.0, n=3, logprobs=2)
    whole = client.completions.create(**many).choices
    texts, tokens = ["", "", ""], [[], [], []]
    for chunk in client.completions.create(**many, stream=True):  # n > 1: chunks of every choice interleave
        for c in chunk.choices:
            texts[c.index] += c.text
            tokens[c.index] += c.logprobs.tokens if c.logprobs else []
    assert texts == [c.text for c in whole] and tokens == [c.logprobs.tokens for c in whole]
    assert all("".join(t) == text for t, text in zip(tokens, texts, strict=True))

    messages = [{"role": "system", "content": "Speak verse."}, {"role": "user", "content": "Who is there?"}]
    chat = dict(model="tiny", messages=messages, max_tokens=25, seed=4, temperature=1.0)
    answer = client.chat.completions.create(**chat)
    deltas = list(client.chat.completions.create(**chat, stream=True))
    assert deltas[0].choices[0].delta.role == "assistant" and deltas[0].object == "chat.completion.chunk"
    assert "".join(d.choices[0].delta.content or "" for d in deltas) == answer.choices[0].message.content
    assert deltas[-1].choices[0].finish_reason == answer.choices[0].finish_reason


def test_chat_completions_render_the_template(client: OpenAI, run):
    messages = [{"role": "user", "content": "Good morrow."}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=30, seed=21, temperature=1.0, n=2,
                                       logprobs=True, top_logprobs=2)
    template = get_template("plain")
    rendered = template.text(messages, eot_text="", add_generation_prompt=True)
    assert rendered == "User: Good morrow.\nAssistant: "
    ids = run.chat_ids(messages, template, max_new_tokens=30)  # room for the reply: context 32 keeps 32 - 32 // 4
    assert r.usage.prompt_tokens == len(ids) == 24 and run.tokenizer.decode(ids) == rendered[-24:]
    for c in r.choices:  # the reply Run.chat gives: it stops where the next turn would begin
        offline = run.chat(messages, template="plain", seed=21 + c.index, temperature=1.0, max_new_tokens=30)
        assert offline == run.generate(rendered[-24:], seed=21 + c.index, temperature=1.0, max_new_tokens=30,
                                       stop=template.reply_stops(has_eot=False))
        assert c.message.role == "assistant" and c.message.content == offline
        assert c.finish_reason == ("stop" if len(c.logprobs.content) < 30 else "length")
        assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in c.logprobs.content)


def test_a_run_without_a_chat_template_says_how_to_get_one(trained_run: Path):
    with running(create_app(trained_run, model_name="tiny", dtype="float32")) as base:
        client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
        assert "--chat-template" in e.value.body["message"] and e.value.body["code"] == "no_chat_template"
        assert client.completions.create(model="tiny", prompt="A", max_tokens=2).choices[0].text  # no key needed


# --------------------------------------------------------------------------- batching


def test_a_seeded_request_gives_its_offline_text_while_16_others_decode(url: str, client: OpenAI, run):
    started, finished = [], {}

    def other(i: int) -> None:
        stream = client.completions.create(model="tiny", prompt=f"{i} ", max_tokens=250, temperature=1.0,
                                           stream=True)
        started.append(i)
        for _ in stream:
            pass
        finished[i] = time.monotonic()

    threads = [threading.Thread(target=other, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    wait_for(lambda: health(url)["running"] >= 16, 60)
    options = dict(seed=1234, temperature=0.8, top_p=0.9, max_new_tokens=60)
    r = client.completions.create(model="tiny", prompt="KING:\n", max_tokens=60, seed=1234, temperature=0.8,
                                  top_p=0.9, extra_body={"top_k": 40, "repetition_penalty": 1.2})
    done = time.monotonic()
    for t in threads:
        t.join(120)
    assert len(finished) == 16 and all(t > done for t in finished.values())  # they were decoding meanwhile
    assert r.choices[0].text == run.generate("KING:\n", top_k=40, repetition_penalty=1.2, **options)


def test_a_client_that_disconnects_frees_its_slot(url: str):
    before = health(url)["steps"]
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{url}/v1/completions", headers=AUTH,
                         json={"model": "tiny", "prompt": "A", "max_tokens": 5000, "stream": True}) as response:
            lines = response.iter_lines()
            while not next(lines).startswith("data: {"):
                pass
            assert health(url)["running"] == 1
    wait_for(lambda: health(url)["running"] == 0, 10)
    assert health(url)["steps"] - before < 2000  # stopped long before its 5,000 tokens


def test_a_full_queue_answers_503_with_retry_after_and_oversized_input_413(trained_run: Path):
    app = create_app(trained_run, model_name="tiny", max_batch=1, max_queue=1, max_body=2048, max_tokens=100_000,
                     dtype="float32")
    with running(app) as base, httpx.Client(base_url=base, timeout=60) as http:
        long = {"model": "tiny", "prompt": "A", "max_tokens": 100_000, "stream": True}  # runs until we hang up
        with http.stream("POST", "/v1/completions", json=long) as response:
            lines = response.iter_lines()  # (a dropped iterator would close the connection)
            next(lines)
            wait_for(lambda: health(base)["running"] == 1)
            queued = threading.Thread(target=lambda: http.post("/v1/completions", json={
                "model": "tiny", "prompt": "B", "max_tokens": 3}).raise_for_status())
            queued.start()
            wait_for(lambda: health(base)["waiting"] == 1)
            full = http.post("/v1/completions", json={"model": "tiny", "prompt": "C", "max_tokens": 3})
            assert_error(full, 503, "queue_full")
            assert full.headers["retry-after"] == "1"
        queued.join(60)  # the disconnect freed the slot for the queued request
        assert health(base)["running"] == 0

        assert_error(http.post("/v1/completions", content=b"{" + b" " * 5000 + b"}", headers=JSON), 413,
                     "request_too_large")
        too_long = {"model": "tiny", "prompt": "x" * 100, "max_tokens": 2}
        error = assert_error(http.post("/v1/completions", json={**too_long, "truncate": False}), 413,
                             "context_length_exceeded")
        assert error["param"] == "prompt"
        r = http.post("/v1/completions", json=too_long)  # by default the prompt keeps its last `context` tokens
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 32


def test_64_concurrent_streaming_clients_all_get_complete_streams(url: str):
    async def one(client: AsyncOpenAI, i: int) -> tuple[str, list]:
        stream = await client.completions.create(model="tiny", prompt=f"{i}:", max_tokens=20, seed=i, temperature=1.0,
                                                 stream=True, stream_options={"include_usage": True})
        return i, [chunk async for chunk in stream]

    async def all_of_them() -> list:
        async with AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120) as client:
            return await asyncio.gather(*(one(client, i) for i in range(64)))

    start = time.monotonic()
    results = asyncio.run(all_of_them())
    assert time.monotonic() - start < 120
    assert len(results) == 64
    for i, chunks in results:
        assert len({c.id for c in chunks}) == 1 and all(c.object == "text_completion" for c in chunks)
        body = [c for c in chunks if c.choices]
        assert body[-1].choices[0].finish_reason == "length"
        assert all(c.choices[0].finish_reason is None for c in body[:-1])
        assert len("".join(c.choices[0].text for c in body)) >= 1
        assert chunks[-1].usage.completion_tokens == 20 and chunks[-1].usage.prompt_tokens == len(f"{i}:")
    assert health(url)["running"] == 0


# --------------------------------------------------------------------------- fuzz


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def malformed_requests(rng: random.Random, max_body: int):
    """(method, path, headers, body bytes) of requests that must each get a 4xx JSON error."""
    good = {"model": "tiny", "prompt": "A", "max_tokens": 2}
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    common = {  # values of the wrong type or out of range, per field
        "max_tokens": ["5", 5.5, True, -1, 2**80, [], {}], "temperature": ["hot", True, -0.5, 3, 1e308, [], {}],
        "top_p": [0, -1, 1.5, "x", True], "n": [0, -3, 1.5, "2", True, 10**6],
        "stop": [5, [1], [""], "", {"a": 1}, ["a"] * 40, True], "seed": [-2**63 - 1, 2**63, 1.5, "1", True, 2**80],
        "stream": ["yes", 1, 0, []], "top_k": [-1, 1.5, "3", 2**80], "min_p": [-0.1, 1, 1.5, "x"],
        "repetition_penalty": [0, -1, 100, "x"], "truncate": ["no", 0, []], "model": [None, 5, [], {}],
        "stream_options": [{"include_usage": True}, "x", 5], "presence_penalty": [1.0, "x", 3],
    }
    completion_only = {"prompt": [None, 5, True, {}, [], [None], [1.5], [[1, "a"]], [-1], [10**9]],
                       "logprobs": [-1, 21, 1.5, "1", True], "echo": ["true", 1, []],
                       "logit_bias": [{"1": 5}, 5, "x"], "suffix": ["tail", 5], "best_of": [0, 3, "x"]}
    chat_only = {"messages": [None, 5, "x", [], [5]], "top_logprobs": [3, -1, 21, "x"], "logprobs": [1, "x"],
                 "response_format": [{"type": "json_object"}, "x"], "max_completion_tokens": [-1, "x", 10**6]}

    def js(obj) -> bytes:
        return json.dumps(obj).encode()

    def wrong_type():
        if rng.random() < 0.6:
            table, body, path = {**common, **completion_only}, dict(good), "/v1/completions"
        else:
            table, body, path = {**common, **chat_only}, dict(chat), "/v1/chat/completions"
        key = rng.choice(sorted(table))
        body[key] = rng.choice(table[key])
        return path, js(body)

    def numbers():
        key = rng.choice(["max_tokens", "temperature", "top_p", "n", "seed", "logprobs", "top_k", "min_p",
                          "repetition_penalty"])
        value = rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1", "-1e999", str(2**70), "1e-999x"])
        if key == "seed" and value == "-1":  # any int64 is a seed (as for `tinylm sample --seed`)
            value = str(-2**63 - 1)
        return "/v1/completions", js(good)[:-1] + f', "{key}": {value}}}'.encode()

    def broken_json():
        text = js(rng.choice([good, chat]))
        cut = rng.randrange(1, len(text))
        return rng.choice(["/v1/completions", "/v1/chat/completions"]), rng.choice(
            [text[:cut], text[:cut] + b"}}", b"", b"   ", b"null", b"[]", b"42", b'"text"', bytes(rng.randrange(256)
                                                                                               for _ in range(20))])

    def invalid_utf8():
        return "/v1/completions", b'{"model": "tiny", "prompt": "\xff\xfe\xc3", "max_tokens": 2}'

    def unknown():
        if rng.random() < 0.5:
            return "/v1/completions", js({**good, "model": rng.choice(["gpt-4", "", "tiny ", "TINY", "x" * 300])})
        return "/v1/completions", js({**good, rng.choice(["colour", "tools", "functions", "prompt_ids"]): 1})

    def oversized():
        return "/v1/completions", js({**good, "prompt": "a" * (max_body + rng.randrange(1, 5000))})

    def bad_chat():
        messages = rng.choice([None, [], [{}], [{"role": "bot", "content": "x"}], [{"role": "user"}],
                               [{"content": "x"}], [{"role": "user", "content": None}], "hello",
                               [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
                               [{"role": "tool", "content": "x", "tool_call_id": "1"}], [[1, 2]]])
        body = dict(chat)
        if messages is None:
            del body["messages"]
        else:
            body["messages"] = messages
        return "/v1/chat/completions", js(body)

    def missing():
        if rng.random() < 0.5:
            body = dict(good)
            body.pop(rng.choice(["model", "prompt"]))
            return "/v1/completions", js(body)
        body = dict(chat)
        body.pop(rng.choice(["model", "messages"]))
        return "/v1/chat/completions", js(body)

    kinds = [wrong_type, numbers, broken_json, invalid_utf8, unknown, oversized, bad_chat, missing]
    for i in range(1000):
        kind = kinds[i % len(kinds)]
        path, body = kind()
        headers = {**AUTH, "Content-Type": "application/json"}
        method = "POST"
        roll = rng.random()
        if roll < 0.03:
            headers = {"Authorization": "Bearer wrong", "Content-Type": "application/json"}
        elif roll < 0.05:
            method, body = "GET", b""
        elif roll < 0.06:
            path = rng.choice(["/v1/nothing", path + "/"])
        elif roll < 0.08:  # a body a web page can send without a CORS preflight, or none named
            headers = {**AUTH, **rng.choice([{}, {"Content-Type": "text/plain"},
                                             {"Content-Type": "application/x-www-form-urlencoded"},
                                             {"Content-Type": "multipart/form-data; boundary=x"}])}
        elif roll < 0.10:  # forged by a web page: another site's name (DNS rebinding) or origin
            headers = {**headers, **rng.choice([{"Host": "attacker.example"}, {"Host": "attacker.example:80"},
                                                {"Host": ""}, {"Origin": "https://attacker.example"},
                                                {"Origin": "null"}])}
        yield method, path, headers, body


def test_1000_malformed_requests_each_get_a_4xx_json_error(url: str):
    max_body = 1 << 16
    rng = random.Random(20240517)
    statuses: dict[int, int] = {}
    valid = {"model": "tiny", "prompt": "A", "max_tokens": 2}
    with httpx.Client(base_url=url, timeout=60) as http:
        rss = None
        for i, (method, path, headers, body) in enumerate(malformed_requests(rng, max_body)):
            response = http.request(method, path, headers=headers, content=body)
            assert 400 <= response.status_code < 500, (method, path, body[:200], response.text)
            assert_error(response, response.status_code)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if i % 40 == 0:  # valid requests keep working in between
                ok = http.post("/v1/completions", json=valid, headers=AUTH)
                assert ok.status_code == 200 and len(ok.json()["choices"][0]["text"]) == 2
            if i == 199:
                rss = _rss_bytes()
        grown = _rss_bytes() - rss
        assert grown < 32 << 20, f"memory grew by {grown / 2**20:.1f} MiB over 800 malformed requests"
        ok = http.post("/v1/completions", json=valid, headers=AUTH)
        assert ok.status_code == 200
    assert set(statuses) >= {400, 401, 403, 404, 405, 413, 415}


def test_lone_surrogates_new_sdk_fields_and_echo_offsets(url: str, client: OpenAI):
    """A JSON string with a lone UTF-16 surrogate ("\\ud800") is valid JSON but no text: a 400 naming the
    field (not a 500, not a dropped stream), and the connection keeps serving. Fields newer SDKs send
    (store, metadata, tool_choice "none", the developer role) are accepted. With echo, a prompt cut to the
    context has text_offsets that point at its tokens' text in the echoed prompt."""
    with httpx.Client(base_url=url, headers={**AUTH, **JSON}, timeout=60) as http:
        cases = [("/v1/completions", '{"model": "tiny", "prompt": "\\ud800", "max_tokens": 2, "echo": true}', "prompt"),
                 ("/v1/completions", '{"model": "tiny", "prompt": ["A", "B\\udfff"], "stream": true, "echo": true}',
                  "prompt[1]"),
                 ("/v1/completions", '{"model": "tiny", "prompt": "A", "stop": ["\\ud83d"]}', "stop[0]"),
                 ("/v1/chat/completions",
                  '{"model": "tiny", "messages": [{"role": "user", "content": "\\ud83d"}]}', "messages[0].content")]
        for path, body, param in cases:
            error = assert_error(http.post(path, content=body.encode()), 400, "invalid_value")
            assert error["param"] == param and "surrogate" in error["message"]
            ok = http.post("/v1/completions", json={"model": "tiny", "prompt": "A", "max_tokens": 2})
            assert ok.status_code == 200  # same connection, still serving
        pair = http.post("/v1/completions", content=b'{"model": "tiny", "prompt": "\\ud83d\\ude00", "max_tokens": 1}')
        assert pair.status_code == 200  # a proper pair is one character (an emoji)
    reply = client.chat.completions.create(
        model="tiny", max_tokens=3, messages=[{"role": "developer", "content": "Be brief."},
                                             {"role": "user", "content": "Hi"}],
        store=False, metadata={"k": "v"}, tool_choice="none", parallel_tool_calls=False)
    assert reply.usage.completion_tokens <= 3

    # 70 characters, 70 char tokens: a scored prompt (echo + logprobs) keeps its last context + 1 = 33, whose
    # last 32 one forward over the context scores (what lm-evaluation-harness's local-completions sends)
    prompt = "ROMEO: " * 10
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=5, temperature=0, echo=True, logprobs=0)
    c = r.choices[0]
    assert c.text.startswith(prompt) and r.usage.prompt_tokens == 33
    for token, offset in zip(c.logprobs.tokens, c.logprobs.text_offset, strict=True):
        assert c.text[offset:offset + len(token)] == token
    assert c.logprobs.text_offset[0] == len(prompt) - 33 and c.logprobs.text_offset[33] == len(prompt)
    assert c.logprobs.token_logprobs[0] is None and None not in c.logprobs.token_logprobs[1:]


def test_chat_logprob_bytes_rebuild_characters_split_across_tokens(tmp_path: Path, corpus_file: Path):
    """A byte-level token that holds part of a character reports its own bytes (the OpenAI `bytes`
    field exists for this), not the bytes of U+FFFD; joined they give the character."""
    from conftest import tiny_config
    from tinylm.generation.sampling import TokenLogprob
    from tinylm.serving.app import API
    from tinylm.training import train

    cfg = tiny_config(tmp_path / "g", corpus_file, max_steps=1, eval_interval=1)
    cfg.data.tokenizer = "gpt2"
    train(cfg)
    service = create_app(tmp_path / "g", dtype="float32").state.service
    ids = service.run.tokenizer.encode("你好")
    assert len(ids) > 2  # split inside characters
    content = API(service).chat_logprobs([TokenLogprob(t, -1.0, [(t, -1.0)]) for t in ids])["content"]
    assert b"".join(bytes(e["bytes"]) for e in content) == "你好".encode()
    assert b"".join(bytes(e["top_logprobs"][0]["bytes"]) for e in content) == "你好".encode()
    # echo offsets: tokens inside one character share its offset; whole tokens point at their text
    with running(create_app(tmp_path / "g", dtype="float32")) as base:
        client = OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=120)
        for prompt in ("日本語 🙂 hello world. ", "日本語 🙂 hello world. " * 10):  # the second is cut to the context
            c = client.completions.create(model="g", prompt=prompt, max_tokens=2, temperature=0, echo=True,
                                          logprobs=0).choices[0]
            offsets = c.logprobs.text_offset[:len(c.logprobs.tokens) - 2]
            assert offsets == sorted(offsets) and offsets[-1] < len(prompt)
            for token, offset in zip(c.logprobs.tokens, offsets):
                if "\ufffd" not in token:
                    assert c.text[offset:offset + len(token)] == token, (token, offset)
            assert c.text[offsets[-1]:len(prompt)] == " "  # the prompt's last token, a space


# --------------------------------------------------------------------------- the command


def one_line_error(capsys, argv: list[str], fragment: str) -> None:
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and fragment in err and "\n" not in err, err


def test_bad_input_of_the_command_is_a_one_line_error(capsys, tmp_path: Path, trained_run: Path):
    one_line_error(capsys, ["serve", str(tmp_path / "missing")], "does not exist")
    one_line_error(capsys, ["serve", str(trained_run / "config.json")], "is a file, not a run directory")
    with bind("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        one_line_error(capsys, ["serve", str(trained_run), "--port", str(port)], f"port {port} on 127.0.0.1 is in use")
    one_line_error(capsys, ["serve", str(trained_run), "--adapter", "nothing"], "NAME=ADAPTER_RUN")
    one_line_error(capsys, ["serve", str(trained_run), "--port", "0", "--chat-template", "llama"], "unknown template")
    one_line_error(capsys, ["serve", str(trained_run), "--max-batch", "0"], "serve.max_batch must be >= 1")
    one_line_error(capsys, ["serve", str(trained_run), "--host", "no.such.host.invalid"], "cannot listen")
    for flag, value, fragment in (("--header-timeout", "0", "serve.header_timeout must be > 0 seconds"),
                                  ("--body-timeout", "nan", "serve.body_timeout must be a finite number"),
                                  ("--write-timeout", "-1", "serve.write_timeout must be > 0"),
                                  ("--write-timeout", "soon", "write_timeout expects a number"),
                                  ("--shutdown-timeout", "-0.5", "serve.shutdown_timeout must be >= 0"),
                                  ("--shutdown-timeout", "inf", "serve.shutdown_timeout must be a finite number"),
                                  ("--allowed-host", "http://example.com", "--allowed-host expects a host name"),
                                  ("--allowed-host", "example.com:8000", "without a scheme, port or path"),
                                  ("--allowed-host", "", "--allowed-host expects"),
                                  ("--cors-origin", "example.com", "--cors-origin expects a web origin"),
                                  ("--cors-origin", "https://example.com/app", "no path")):
        one_line_error(capsys, ["serve", str(trained_run), "--port", "0", flag, value], fragment)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_tinylm_serve_runs_until_interrupted(trained_run: Path, stop: int):
    env = {**os.environ, "TINYLM_API_KEY": "sk-env", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tinylm", "serve", str(trained_run), "--port", "0", "--dtype",
                             "float32", "--model-name", "shakespeare", "--chat-template", "plain"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        base = proc.stdout.readline().strip()
        assert base.startswith("http://127.0.0.1:"), proc.stderr.read()
        client = OpenAI(base_url=f"{base}/v1", api_key="sk-env", max_retries=0)
        assert [m.id for m in client.models.list()] == ["shakespeare"]
        reply = client.chat.completions.create(model="shakespeare", messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=5)
        assert reply.usage.completion_tokens <= 5
        proc.send_signal(stop)  # Ctrl-C, or kill / docker stop
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert "serving shakespeare on http://127.0.0.1:" in err and "server stopped" in err

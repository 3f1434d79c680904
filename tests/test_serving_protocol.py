"""Request validation for the OpenAI-compatible API, property-tested: any body gives a checked request
or a 4xx APIError naming the field, never another exception."""

from __future__ import annotations

import ipaddress
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinylm.serving.protocol import APIError, Limits, chat_request, completion_request, parse_json

LIMITS = Limits(max_tokens=64, max_batch=4, max_rows=8, vocab_size=100)
FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop",
          "seed", "stream", "stream_options", "logprobs", "top_logprobs", "echo", "top_k", "min_p",
          "repetition_penalty", "truncate", "user", "presence_penalty", "frequency_penalty", "logit_bias",
          "best_of", "suffix", "response_format", "tools"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=8), st.sampled_from(["user", "system", "assistant", "tool", "m", ""]))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                           max_leaves=12)
messages = st.lists(st.one_of(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "bot"]),
                                                     "content": st.one_of(st.text(max_size=10), json_values)}),
                              json_values), max_size=4)
bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8).flatmap(
    lambda d: st.fixed_dictionaries({"model": st.one_of(st.just("m"), json_values),
                                     "messages": messages, "prompt": st.one_of(st.text(max_size=10), json_values)},
                                    optional={}).map(lambda base: {**base, **d}))


def check(parse, body) -> None:
    try:
        req = parse(body, LIMITS)
    except APIError as e:
        assert 400 <= e.status < 500
        error = e.body()["error"]
        assert error["message"] and "\n" not in error["message"] and error["type"]
        assert error["param"] is None or isinstance(error["param"], str)
        json.dumps(e.body())
        return
    sp = req.sampling
    assert 0 <= sp.max_tokens <= LIMITS.max_tokens and 1 <= sp.n <= LIMITS.max_batch
    for i in range(sp.n):
        cfg = sp.config(i)  # a valid GenerationConfig for every choice
        assert math.isfinite(cfg.temperature) and 0 <= cfg.temperature <= 2


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_any_json_value_is_a_request_or_a_4xx(body):
    check(completion_request, body)
    check(chat_request, body)


@settings(max_examples=250, deadline=None)
@given(bodies)
def test_bodies_with_known_fields_of_any_type_are_a_request_or_a_4xx(body):
    check(completion_request, body)
    check(chat_request, body)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_are_json_or_a_400(raw):
    try:
        parse_json(raw, 32)
    except APIError as e:
        assert e.status in (400, 413)


valid = st.fixed_dictionaries({
    "model": st.just("m"), "prompt": st.one_of(st.text(max_size=20), st.lists(st.text(max_size=5), min_size=1,
                                                                               max_size=2)),
}, optional={  # seed: choice i of up to 2 prompts x n=4 draws from seed + i, an int64 (check_seeds)
    "max_tokens": st.integers(0, 64), "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1),
    "n": st.integers(1, 4), "stop": st.one_of(st.text(min_size=1, max_size=4),
                                              st.lists(st.text(min_size=1, max_size=4), max_size=4)),
    "seed": st.integers(-2**63, 2**63 - 8), "stream": st.booleans(), "logprobs": st.integers(0, 20), "echo": st.booleans(),
    "top_k": st.integers(0, 1000), "min_p": st.floats(0, 0.99), "repetition_penalty": st.floats(0.5, 2),
})


@settings(max_examples=200, deadline=None)
@given(valid)
def test_valid_completion_bodies_are_accepted_as_given(body):
    req = completion_request(body, LIMITS)
    sp = req.sampling
    assert sp.max_tokens == body.get("max_tokens", 16)
    cfg = sp.config(0)
    assert cfg.temperature == body.get("temperature", 1.0)
    assert cfg.top_p == body.get("top_p", 1.0) and cfg.seed == body.get("seed")
    stops = body.get("stop", [])
    assert cfg.stop == ([stops] if isinstance(stops, str) else stops)
    assert len(req.prompts) == (1 if isinstance(body["prompt"], str) else len(body["prompt"]))


@pytest.mark.parametrize("body, status, param, fragment", [
    ({"model": "m"}, 400, "prompt", "required"),
    ({"model": "m", "prompt": "x", "max_tokens": -1}, 400, "max_tokens", "greater than or equal"),
    ({"model": "m", "prompt": "x", "max_tokens": 65}, 400, "max_tokens", "--max-tokens"),
    ({"model": "m", "prompt": "x", "max_tokens": "5"}, 400, "max_tokens", "valid integer"),
    ({"model": "m", "prompt": "x", "temperature": 1e400}, 400, "temperature", "finite"),
    ({"model": "m", "prompt": "x", "n": 5}, 400, "n", "--max-batch"),
    ({"model": "m", "prompt": ["a", "b", "c"], "n": 3}, 400, "prompt", "--max-queue"),
    ({"model": "m", "prompt": "x", "colour": 1}, 400, "colour", "unknown field"),
    ({"model": "m", "prompt": [1, 100]}, 400, "prompt", "outside the vocabulary"),
    ({"model": "m", "prompt": []}, 400, "prompt", "empty"),
    ({"model": "m", "prompt": "x", "stop": [""]}, 400, "stop", "non-empty"),
    ({"model": "m", "prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options", "stream"),
    ({"model": "m", "prompt": "x", "presence_penalty": 0.5}, 400, "presence_penalty", "repetition_penalty"),
    ([1, 2], 400, None, "object"),
])
def test_completion_errors_name_the_field(body, status, param, fragment):
    with pytest.raises(APIError) as e:
        completion_request(body, LIMITS)
    assert e.value.status == status and e.value.param == param and fragment in e.value.message


@pytest.mark.parametrize("messages, param, fragment", [
    ([], "messages", "non-empty"),
    ([{"role": "bot", "content": "hi"}], "messages[0]", "unknown role"),
    ([{"role": "user"}], "messages[0]", "needs \"role\" and \"content\""),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "messages[1]", "only come first"),
    ([{"role": "user", "content": 5}], "messages[0]", "content must be a string"),
    ([{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content", "text parts"),
    ([{"role": "user", "content": "x", "tool_calls": []}], "messages[0].tool_calls", "unknown field"),
])
def test_bad_messages_are_400s_naming_the_message(messages, param, fragment):
    with pytest.raises(APIError) as e:
        chat_request({"model": "m", "messages": messages}, LIMITS)
    assert e.value.status == 400 and e.value.param == param and fragment in e.value.message


def test_chat_accepts_text_parts_and_max_completion_tokens():
    req = chat_request({"model": "m", "max_completion_tokens": 7, "logprobs": True, "top_logprobs": 2,
                        "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                  {"type": "text", "text": "b"}], "name": "x"}]},
                       LIMITS)
    assert req.messages == [{"role": "user", "content": "ab"}]
    assert req.sampling.max_tokens == 7 and req.logprobs == 2


def test_json_errors():
    for raw, status in [(b"", 400), (b"{", 400), (b"\xff\xfe{}", 400), (b'{"a": NaN}', 400),
                        (b'{"a": -Infinity}', 400), (b"[" * 100000, 400), (b"x" * 2_000_001, 413)]:
        with pytest.raises(APIError) as e:
            parse_json(raw, 2_000_000)
        assert e.value.status == status
    assert parse_json(b'{"a": 1}', 32) == {"a": 1}


# --------------------------------------------------------------------------- Host headers (DNS rebinding)

def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)
names = st.lists(labels, min_size=1, max_size=4).map(".".join).filter(lambda n: not _is_address(n))
ports = st.one_of(st.just(""), st.integers(0, 65535).map(lambda p: f":{p}"))
cases = st.sampled_from([str.lower, str.upper, str.title])
loopback_hosts = st.one_of(
    st.just("localhost"), names.map(lambda n: f"{n}.localhost"),
    st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)).map(lambda t: "127.%d.%d.%d" % t),
    st.just("[::1]"))
binds = st.sampled_from(["127.0.0.1", "::1", "localhost", "0.0.0.0", "::", "10.1.2.3", "box.lan"])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), binds, st.lists(st.one_of(names, names.map(lambda n: "." + n)), max_size=3))
def test_any_host_header_is_answered_or_refused_never_an_error(header, bound, allowed):
    from tinylm.serving.app import Hosts, host_name

    assert isinstance(Hosts(bound, allowed).allows(header), bool)
    name = host_name(header)
    assert name is None or (name == name.lower() and name.strip() == name and not name.endswith("."))


@settings(max_examples=200, deadline=None)
@given(loopback_hosts, ports, cases, binds)
def test_loopback_hosts_are_always_answered(host, port, case, bound):
    from tinylm.serving.app import Hosts

    assert Hosts(bound).allows(case(host) + port)


@settings(max_examples=300, deadline=None)
@given(names, ports, cases, st.lists(names, max_size=3), st.booleans())
def test_other_names_are_answered_only_when_allowed(name, port, case, allowed, dot):
    from tinylm.serving.app import Hosts

    header = case(name) + ("." if dot else "") + port
    local = name == "localhost" or name.endswith(".localhost")
    assert Hosts("127.0.0.1", allowed).allows(header) == (local or name in allowed)
    assert Hosts("0.0.0.0", [name]).allows(header)  # listed: answered (with any port, case, a final dot)
    assert Hosts("127.0.0.1", ["." + name]).allows(f"api.{name}{port}") and Hosts("127.0.0.1", ["*"]).allows(header)
    assert not Hosts("127.0.0.1", [name]).allows(f"{name}.attacker.example{port}")


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(), ports)
def test_ip_addresses_are_answered_when_the_server_listens_on_them(address, port):
    from tinylm.serving.app import Hosts

    header = (f"[{address}]" if address.version == 6 else str(address)) + port
    assert Hosts("0.0.0.0").allows(header)  # listening on every address: any (no rebinding sends an address)
    assert Hosts(str(address)).allows(header)
    assert Hosts("127.0.0.1").allows(header) == address.is_loopback

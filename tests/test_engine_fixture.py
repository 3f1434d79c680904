"""The generation engine against the outputs the decoding code gave before the one-engine redesign
(issue 24): tests/fixtures/engine/ holds a tiny trained run and, in expected.json, what commit b4a7390's
beam search, `generate_ids`, `Run.generate` / `Run.chat` and `tinylm serve` (seeded requests) produced
with it (tests/fixtures/engine/make.py). The same calls must give the same ids and texts (beam scores
within float32 rounding)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from serving_server import running

import tinylm
from tinylm.generation import beam_search, generate_ids

FIXTURE = Path(__file__).parent / "fixtures" / "engine"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def run():
    return tinylm.load(FIXTURE, device="cpu", dtype="float32", compile="off")


def engine_args(run) -> dict:
    tok = run.tokenizer
    return dict(vocab_size=tok.vocab_size, stop_ids=tok.stop_ids, suppress_ids=sorted(tok.suppressed_ids))


@pytest.mark.parametrize("case", EXPECTED["beams"], ids=lambda c: f"{c['prompt'][:8]}-{c['options']['beams']}")
def test_beam_search_gives_the_recorded_beams(run, case):
    ids = run.encode_prompt(case["prompt"])
    beams = beam_search(run.model, ids, decode=run.tokenizer.decode, **case["options"], **engine_args(run))
    assert [b.ids for b in beams] == case["ids"]
    assert [b.score for b in beams] == pytest.approx(case["scores"], abs=1e-5)
    assert [b.logprob for b in beams] == pytest.approx(case["logprobs"], abs=1e-4)


@pytest.mark.parametrize("case", EXPECTED["generate_ids"], ids=lambda c: json.dumps(c["options"]))
def test_generate_ids_gives_the_recorded_ids(run, case):
    batch = [run.encode_prompt(p) for p in case["prompts"]]
    assert generate_ids(run.model, batch, **case["options"], **engine_args(run)) == case["ids"]
    assert case["ids"] == case["alone"]  # each row of the batch as it was alone (seed + its index)


def test_the_run_api_gives_the_recorded_texts(run):
    expected = EXPECTED["run"]
    stop = expected["stop_free"][20:23]
    assert run.generate(["ROMEO:\n", "To be", "", "HAMLET.\nWho's there?\nBERNARDO.\nNay, answer me."],
                        max_new_tokens=40, temperature=1.0, seed=11) == expected["seeded_batch"]
    assert run.generate("ROMEO", max_new_tokens=60, beams=2, stop=[stop]) == expected["beams_with_stop"]
    assert run.generate("KING:", max_new_tokens=60, temperature=1.0, seed=3) == expected["stop_free"]
    assert run.generate("KING:", max_new_tokens=60, temperature=1.0, seed=3, stop=[stop]) == expected["stopped"]
    assert "".join(run.stream("KING:", max_new_tokens=60, temperature=0.8, seed=4,
                              stop=[expected["stop_free"][30:32]])) == expected["stream"]
    with pytest.warns(tinylm.console.TinylmWarning, match="last 24 are used"):
        chat = run.chat([{"role": "user", "content": "Who is there?"}], template="plain", max_new_tokens=40,
                        temperature=1.0, seed=9)
    assert chat == expected["chat"]
    assert [c.ids for c in run.complete(["ROMEO:\n", "To be"], max_new_tokens=30, temperature=0.7, seed=2)] \
        == expected["complete_ids"]


@pytest.mark.slow
def test_the_server_answers_the_recorded_texts():
    from tinylm.serving import create_app

    app = create_app(FIXTURE, model_name="tiny", chat_template="plain", max_batch=20, dtype="float32", device="cpu")
    with running(app) as url:
        for name, case in EXPECTED["server"].items():
            r = httpx.post(url + case["path"], json={"model": "tiny", **case["body"]}, timeout=120)
            assert r.status_code == 200, r.text
            choices = r.json()["choices"]
            texts = [c["text"] if "text" in c else c["message"]["content"] for c in choices]
            assert texts == case["texts"], name
            assert [c["finish_reason"] for c in choices] == case["finish"], name


def test_run_generate_returns_each_tokens_logprob_and_alternatives(run):
    """`Run.generate(..., logprobs=N)`: the same text as without, and each new token's log-probability
    under the model (a lone greedy row: the logits of the prompt + the tokens before it, alone) with its
    N likeliest alternatives, best first."""
    import torch

    options = dict(max_new_tokens=12, temperature=0)
    done = run.generate("ROMEO:\n", logprobs=3, **options)
    assert done.text == run.generate("ROMEO:\n", **options) and len(done.logprobs) == len(done.ids) == 12
    with torch.no_grad():
        logits = run.model(torch.tensor([done.prompt_ids + done.ids]))[0][0, len(done.prompt_ids) - 1:-1]
    expected = torch.log_softmax(logits[:, :run.tokenizer.vocab_size].float(), dim=-1)
    for j, (token, got) in enumerate(zip(done.ids, done.logprobs, strict=True)):
        assert got.token == token and got.logprob == pytest.approx(float(expected[j, token]), abs=1e-4)
        assert [t for t, _ in got.top] == expected[j].topk(3).indices.tolist()  # greedy: the chosen is the best
    batch = run.generate(["ROMEO:\n", "To be"], logprobs=0, max_new_tokens=5, temperature=1.0, seed=5)
    assert [len(c.logprobs) for c in batch] == [len(c.ids) for c in batch] and all(not t.top for t in batch[0].logprobs)


@pytest.mark.slow
def test_the_server_beam_searches_as_offline_beam_search():
    """/v1/completions with use_beam_search (tinylm's extra, through the official client's extra_body):
    the n best of best_of beams per prompt, the texts `Run.generate(beams=best_of, num_return_sequences=n)`
    gives offline."""
    from openai import BadRequestError, OpenAI

    from tinylm.serving import create_app

    app = create_app(FIXTURE, model_name="tiny", max_batch=8, dtype="float32", device="cpu")
    offline = app.state.service.run
    prompts = ["ROMEO:\n", "To be"]
    with running(app) as url:
        client = OpenAI(base_url=url + "/v1", api_key="none")
        got = client.completions.create(model="tiny", prompt=prompts, max_tokens=30, n=2, best_of=3, stop=["\n\n"],
                                        extra_body={"use_beam_search": True, "length_penalty": 0.5})
        with pytest.raises(BadRequestError, match="needs use_beam_search"):
            client.completions.create(model="tiny", prompt="ROMEO", max_tokens=5, n=1, best_of=2)
        with pytest.raises(BadRequestError, match="cannot stream"):
            client.completions.create(model="tiny", prompt="ROMEO", max_tokens=5, stream=True,
                                      extra_body={"use_beam_search": True})
    expected = offline.generate(prompts, max_new_tokens=30, beams=3, num_return_sequences=2, length_penalty=0.5,
                                stop=["\n\n"])
    assert [c.index for c in got.choices] == [0, 1, 2, 3]
    assert [c.text for c in got.choices] == [t for texts in expected for t in texts]
    assert len(set(c.text for c in got.choices[:2])) == 2  # two different beams of the first prompt

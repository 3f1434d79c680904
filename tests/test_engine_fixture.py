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

"""Values derived from user input are checked before any work, by one rule (issue 27, item 9).

Seeds: row i of a seeded batch (sample i of `tinylm sample --num-samples`, prompt i of a batch in
the Python API, choice i of a server request) draws from seed + i, which must still be an int64:
`tinylm.config.check_seeds`, shared by the three. Seeds the rule allows draw exactly what they did
before it (no wrapping). Negative seeds work wherever a seed is taken. Batch plans: a huge
`train.batch_tokens` is planned at once (the micro-batch search is bounded, not O(batch))."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import httpx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tinylm
from tinylm.cli import main
from tinylm.config import SampleConfig, load_preset
from tinylm.errors import ConfigError
from tinylm.config.fields import INT64_MAX, INT64_MIN, check_seeds
from tinylm.serving.protocol import APIError, Limits, chat_request, completion_request
from tinylm.training.batch import plan_batch

pytestmark = pytest.mark.usefixtures("torch_one_thread")

LIMITS = Limits(max_tokens=64, max_batch=8, max_rows=64, vocab_size=50)


@pytest.fixture(scope="module")
def run(trained_run):
    return tinylm.load(trained_run, dtype="float32")


# --------------------------------------------------------------------------- the report, end to end


def test_the_reported_sample_fails_before_any_sample_and_its_fix_works(trained_run, run, capsys):
    args = ["sample", str(trained_run), "--num-samples", "2", "--max-new-tokens", "10"]
    assert main([*args, "--seed", str(INT64_MAX)]) == 1
    out, err = capsys.readouterr()
    assert out == ""  # nothing sampled: the error came before any work (it came after one sample before)
    assert err.count("\n") == 1 and err.startswith("error: seed 9223372036854775807 with 2 samples: sample 2 ")
    fix = int(err.rsplit("at most ", 1)[1])
    assert fix == INT64_MAX - 1
    assert main([*args, "--seed", str(fix)]) == 0  # the fix the message names works
    samples = capsys.readouterr().out.split("\n" + "-" * 40 + "\n")
    assert [s.rstrip("\n") for s in samples] == [run.generate("", seed=fix + i, max_new_tokens=10).rstrip("\n")
                                                for i in range(2)]


# --------------------------------------------------------------------------- one rule, three routes


def _python_api(run, seed: int, rows: int) -> None:
    run.generate(["KING:"] * rows, seed=seed, max_new_tokens=1, temperature=1.0)


def _cli(seed: int, rows: int) -> None:
    SampleConfig(seed=seed, num_samples=rows).validate()


def _server(seed: int, rows: int) -> None:
    try:  # rows as n choices of one prompt, and as prompts x n
        completion_request({"model": "m", "prompt": "x", "n": rows, "seed": seed}, LIMITS)
        chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": rows, "seed": seed}, LIMITS)
        if rows % 2 == 0:
            completion_request({"model": "m", "prompt": ["x", "y"], "n": rows // 2, "seed": seed}, LIMITS)
    except APIError as e:
        assert e.status == 400 and e.param == "seed"
        raise ConfigError(e.message) from None


@settings(max_examples=30, deadline=None)
@given(below=st.integers(0, 8), rows=st.integers(1, 8))
def test_cli_python_api_and_server_share_one_seed_rule(run, below, rows):
    seed = INT64_MAX - below
    ok = seed + rows - 1 <= INT64_MAX
    messages = []
    for route in (lambda: _cli(seed, rows), lambda: _python_api(run, seed, rows), lambda: _server(seed, rows)):
        if ok:
            route()
        else:
            with pytest.raises(ConfigError) as e:
                route()
            messages.append(str(e.value).split(":", 1)[1])  # after "seed S with N samples|prompts|choices"
    assert len({m.split("would draw from", 1)[1] for m in messages}) <= 1  # one rule, one fix
    if not ok:
        assert all(m.endswith(f"give a seed of at most {INT64_MAX - rows + 1}") for m in messages)


def test_seeds_near_the_top_draw_what_each_row_draws_alone(run):
    """No wrapping: a batch at the largest allowed seed is row b at seed + b, exactly."""
    seed = INT64_MAX - 1
    both = run.generate(["KING:", "HAMLET:"], seed=seed, max_new_tokens=8, temperature=1.0)
    alone = [run.generate("KING:", seed=seed, max_new_tokens=8, temperature=1.0),
             run.generate("HAMLET:", seed=seed + 1, max_new_tokens=8, temperature=1.0)]
    assert both == alone
    sp = completion_request({"model": "m", "prompt": "x", "n": 2, "seed": seed}, LIMITS).sampling
    assert [sp.config(i).seed for i in range(2)] == [seed, INT64_MAX]  # was (seed + i) mod 2**63


@pytest.mark.slow
def test_the_server_answers_a_seed_past_the_rule_with_a_400_and_keeps_serving(trained_run, run):
    from serving_server import running
    from tinylm.serving import create_app

    with running(create_app(trained_run, model_name="tiny", dtype="float32")) as url:
        body = {"model": "tiny", "prompt": "KING:", "max_tokens": 6, "temperature": 1.0, "n": 2}
        bad = httpx.post(f"{url}/v1/completions", json={**body, "seed": INT64_MAX}, timeout=60)
        assert bad.status_code == 400
        error = bad.json()["error"]
        assert error["param"] == "seed" and error["message"].endswith(f"at most {INT64_MAX - 1}")
        good = httpx.post(f"{url}/v1/completions", json={**body, "seed": INT64_MAX - 1}, timeout=60)
        assert good.status_code == 200, good.text
        texts = [c["text"] for c in sorted(good.json()["choices"], key=lambda c: c["index"])]
        assert texts == [run.generate("KING:", seed=INT64_MAX - 1 + i, max_new_tokens=6, temperature=1.0)
                         for i in range(2)]


def test_check_seeds_edges():
    check_seeds(None, 10**6)
    check_seeds(INT64_MAX, 1)
    check_seeds(-INT64_MAX, 10**6)
    check_seeds(INT64_MAX - 9, 10)
    with pytest.raises(ConfigError, match=f"^seed {INT64_MAX - 8} with 10 rows: row 10 would draw from seed "):
        check_seeds(INT64_MAX - 8, 10)


# --------------------------------------------------------------------------- negative seeds


def test_negative_seeds_work_wherever_a_seed_is_taken(tmp_path, trained_run, corpus_text, capsys):
    docs = tmp_path / "docs.txt"  # documents for the shuffle split to route
    docs.write_text("\n<|endoftext|>\n".join(corpus_text[i:i + 2000] for i in range(0, 40_000, 2000)),
                    encoding="utf-8")
    for out in ("a", "b"):  # the shuffle split's numpy generator took no negative seed (a traceback)
        assert main(["prepare", str(docs), "--out", str(tmp_path / out), "--split", "shuffle", "--val-fraction",
                     "0.3", "--split-seed", "-1"]) == 0
    assert (tmp_path / "a" / "val.bin").read_bytes() == (tmp_path / "b" / "val.bin").read_bytes()
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["splits"]["val"]["tokens"] > 0
    from tinylm.data.records import split_conversations

    conversations = [(f"r{i}", [{"role": "user", "content": str(i)}]) for i in range(10)]
    assert split_conversations(conversations, 0.3, -5) == split_conversations(conversations, 0.3, -5)
    capsys.readouterr()
    assert main(["sample", str(trained_run), "--seed", "-3", "--num-samples", "2", "--max-new-tokens", "4"]) == 0
    # the int64 minimum is a seed too (it was refused as "at most 9,223,... in size"); one below is not
    assert main(["sample", str(trained_run), "--seed", str(INT64_MIN), "--max-new-tokens", "3"]) == 0
    capsys.readouterr()
    assert main(["sample", str(trained_run), "--seed", str(INT64_MIN - 1), "--max-new-tokens", "3"]) == 1
    err = capsys.readouterr().err
    assert f"from {INT64_MIN:,} to {INT64_MAX:,}" in err and len(err.strip().splitlines()) == 1
    sp = completion_request({"model": "m", "prompt": "x", "n": 2, "seed": INT64_MIN}, LIMITS).sampling
    assert [sp.config(i).seed for i in range(2)] == [INT64_MIN, INT64_MIN + 1]
    with pytest.raises(APIError):
        completion_request({"model": "m", "prompt": "x", "seed": INT64_MIN - 1}, LIMITS)


# --------------------------------------------------------------------------- batch plans


def test_a_huge_batch_tokens_is_planned_at_once():
    cfg = load_preset("tiny-test")
    cfg.train.batch_size, cfg.train.batch_tokens = 0, cfg.seq_len * 2**60
    start = time.perf_counter()
    plan = plan_batch(cfg, 1)  # listed every divisor of 2**60 before: never returned
    assert time.perf_counter() - start < 5
    assert plan.micro * cfg.seq_len <= 8192 and plan.tokens == cfg.train.batch_tokens
    assert plan == plan_batch(cfg, 1, lambda micro: micro * cfg.seq_len <= 8192, most=10**6)


# --------------------------------------------------------------------------- a step of a huge batch stops


def _huge_step_run(tmp_path, corpus_file, *flags: str, ignore_sigint: bool = False) -> subprocess.Popen:
    """`tinylm train` whose one step would draw 2^63 - 1 micro-batches (legal: "one step then draws that
    many micro-batches"); `ignore_sigint` starts it as a script's background job is (SIGINT ignored)."""
    cmd = [sys.executable, "-m", "tinylm", "train", "--preset", "tiny-test", "--text", str(corpus_file), "--out",
           str(tmp_path / "run"), "--set", f"train.grad_accum={INT64_MAX}", *flags]
    pre = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=pre)


def _wait_for_step(proc: subprocess.Popen) -> list[str]:
    lines = []
    for line in proc.stdout:  # the header's "device" line comes just before the first step
        lines.append(line)
        if line.lstrip().startswith("device"):
            return lines
    raise AssertionError("".join(lines))


@pytest.mark.slow
def test_the_time_budget_ends_a_step_of_a_huge_batch(tmp_path, corpus_file):
    proc = _huge_step_run(tmp_path, corpus_file, "--time-budget", "2")
    out, _ = proc.communicate(timeout=120)  # ran on until killed: the budget was checked between steps only
    assert proc.returncode == 0, out
    state = torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)
    assert state["step"] == 0 and json.loads((tmp_path / "run" / "config.json").read_text())


@pytest.mark.slow
def test_ctrl_c_stops_a_step_of_a_huge_batch_and_a_second_ctrl_c_aborts(tmp_path, corpus_file):
    proc = _huge_step_run(tmp_path, corpus_file)
    _wait_for_step(proc)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)  # ran on: "stopping after this step" never came
    assert proc.returncode == 130 and "the last complete step is saved" in out, out
    assert "interrupted at step 0; checkpoint saved" in out and "Warning" not in out, out
    assert torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)["step"] == 0

    # as a script's background job (SIGINT ignored before the run): the first Ctrl-C still stops, and the
    # second, which was ignored, aborts without saving
    again = _huge_step_run(tmp_path / "b", corpus_file, ignore_sigint=True)
    _wait_for_step(again)
    time.sleep(1)
    again.send_signal(signal.SIGINT)
    for line in again.stdout:
        if "Ctrl-C again" in line:
            break
    again.send_signal(signal.SIGINT)
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 130 and "interrupted" in out and "checkpoint saved" not in out, out

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tinylm
from tinylm.config import ModelConfig
from tinylm.generation import generate_ids, sample_next, stream_text
from tinylm.model import GPT


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=30, context=8, n_layer=2, n_head=2, d_model=16)).eval()


def greedy_reference(model, prompt, n):
    seq = list(prompt)
    for _ in range(n):
        logits, _ = model(torch.tensor([seq[-model.cfg.context:]]))
        seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt):]


def test_temperature_zero_is_greedy_and_runs_past_the_context(model):
    out = list(generate_ids(model, [1, 2, 3], 20, temperature=0))
    assert len(out) == 20  # 23 tokens > context 8: the window slides
    assert out == greedy_reference(model, [1, 2, 3], 20)


def test_top_k_one_is_greedy(model):
    out = list(generate_ids(model, [4], 12, temperature=1.5, top_k=1, seed=0))
    assert out == greedy_reference(model, [4], 12)


def test_seeded_sampling_is_reproducible(model):
    a = list(generate_ids(model, [5], 30, temperature=1.0, seed=123))
    b = list(generate_ids(model, [5], 30, temperature=1.0, seed=123))
    c = list(generate_ids(model, [5], 30, temperature=1.0, seed=124))
    assert a == b and a != c


def test_generation_stops_at_a_stop_id(model):
    first = next(iter(generate_ids(model, [1], 1, temperature=0)))
    out = list(generate_ids(model, [1], 50, temperature=0, stop_ids=[first]))
    assert out == [first]


@given(logits=st.lists(st.floats(-20, 20), min_size=2, max_size=40), k=st.integers(1, 40),
       seed=st.integers(0, 2**31))
@settings(max_examples=150, deadline=None)
def test_top_k_samples_only_among_the_k_likeliest(logits, k, seed):
    t = torch.tensor([logits])
    k = min(k, len(logits))
    token = int(sample_next(t, temperature=1.0, top_k=k, generator=torch.Generator().manual_seed(seed)))
    kth = torch.topk(t[0], k).values[-1]
    assert t[0, token] >= kth


def test_stream_text_holds_back_split_utf8():
    # a byte-level decode in which a multi-byte character arrives in two tokens
    pieces = {1: b"h", 2: b"\xc3", 3: b"\xa9", 4: b"!"}

    def decode(ids):
        return b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")

    out = list(stream_text([1, 2, 3, 4], decode))
    assert out == ["h", "é", "!"]
    assert "".join(stream_text([2], decode)) == "\ufffd"  # flushed at the end


def test_loaded_run_generates_and_streams(trained_run):
    run = tinylm.load(trained_run)
    text = run.generate("ROMEO", max_new_tokens=40, temperature=0.8, seed=1)
    assert len(text) == 40
    assert "".join(run.stream("ROMEO", max_new_tokens=40, temperature=0.8, seed=1)) == text
    assert len(run.generate("", max_new_tokens=5, seed=0)) == 5  # empty prompt starts from a newline


def test_prompt_problems_warn(trained_run):
    run = tinylm.load(trained_run)
    with pytest.warns(tinylm.console.TinylmWarning, match="not in the vocabulary"):
        run.generate("ROMEO 🙂", max_new_tokens=2, seed=0)
    with pytest.warns(tinylm.console.TinylmWarning, match="more than the context"):
        run.generate("x" * 100, max_new_tokens=2, seed=0)

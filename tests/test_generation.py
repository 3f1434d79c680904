"""The generation engine: sampling filters, KV cache, batching, sliding past the context,
beam search, stop strings, the Run API and `tinylm sample`."""

import functools

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import tinylm
from tinylm.cli import main
from tinylm.config import ModelConfig, SampleConfig
from tinylm.errors import ConfigError
from tinylm.generation import (GenerationConfig, StopFilter, apply_repetition_penalty, beam_search, cut_at_stop,
                               generate_ids, min_p_filter, sample_next, stream_ids, stream_text, top_p_filter)
from tinylm.model import GPT

POSITIONS = ["learned", "sinusoidal", "rope", "none"]


@functools.lru_cache(maxsize=None)
def random_model(pos: str = "learned", context: int = 16) -> GPT:
    """A small random model with weights large enough that its next-token choices are clear-cut."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, context=context, n_layer=2, n_head=4, d_model=32, pos=pos, tie_weights=False)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 1.0)
    return model


@pytest.fixture(scope="module")
def model():
    return random_model("learned", context=8)


def greedy_reference(model, prompt, n):
    """Greedy decoding the slow way: the model over the last `context` tokens for every token."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([seq[-model.cfg.context:]]))
            seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt):]


def sliding_reference(model, prompt, n):
    """Greedy decoding with the documented KV-cache window: once the window outgrows the
    context it restarts from the last context // 2 tokens (positions from 0)."""
    context, keep = model.cfg.context, model.cfg.context // 2
    seq = list(prompt)
    start = max(0, len(seq) - context)
    with torch.no_grad():
        for _ in range(n):
            if len(seq) - start > context:
                start = len(seq) - keep
            logits, _ = model(torch.tensor([seq[start:]]))
            seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt):]


def sequence_logprob(model, prompt, ids):
    """Sum of log-probabilities of `ids` after `prompt` (one teacher-forced pass; fits the context)."""
    seq = torch.tensor([list(prompt) + list(ids)])
    with torch.no_grad():
        logits, _ = model(seq[:, :-1])
    logprobs = torch.log_softmax(logits.float(), dim=-1)[0, len(prompt) - 1:]
    return float(logprobs.gather(-1, torch.tensor(ids)[:, None]).sum())


# --------------------------------------------------------------------------- cache, batching, sliding


@pytest.mark.parametrize("pos", POSITIONS)
def test_greedy_with_and_without_cache_is_identical(pos):
    model = random_model(pos)
    prompt = [1, 2, 3]
    n = model.cfg.context - len(prompt)  # the whole sequence fits the context
    cached = generate_ids(model, prompt, n, temperature=0)
    uncached = generate_ids(model, prompt, n, temperature=0, use_cache=False)
    assert cached == uncached == greedy_reference(model, prompt, n)
    assert len(set(cached)) > 2  # not a degenerate model that repeats one token


@pytest.mark.parametrize("pos", POSITIONS)
@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_prompts_of_different_lengths_equal_one_by_one(pos, use_cache):
    model = random_model(pos)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32], [40, 41]]
    for n in (6, 3 * model.cfg.context):  # within the context, and sliding past it
        batched = generate_ids(model, prompts, n, temperature=0, use_cache=use_cache)
        alone = [generate_ids(model, p, n, temperature=0, use_cache=use_cache) for p in prompts]
        assert batched == alone
        assert all(len(out) == n for out in batched)


@pytest.mark.parametrize("pos", POSITIONS)
def test_generation_past_the_context_slides_the_window(pos):
    model = random_model(pos)
    n = 3 * model.cfg.context
    for prompt in ([1, 2, 3], list(range(1, 17))):  # short, and exactly the context
        assert generate_ids(model, prompt, n, temperature=0) == sliding_reference(model, prompt, n)
        assert generate_ids(model, prompt, n, temperature=0, use_cache=False) == greedy_reference(model, prompt, n)


def test_a_prompt_longer_than_the_context_keeps_its_last_tokens():
    model = random_model("rope")
    prompt = list(range(1, 41))  # 40 tokens, context 16
    assert generate_ids(model, prompt, 5, temperature=0) == generate_ids(model, prompt[-16:], 5, temperature=0)
    with pytest.raises(ConfigError, match="more than the model's context"):
        generate_ids(model, prompt, 5, temperature=0, truncate=False)


def test_temperature_zero_is_greedy_and_runs_past_the_context(model):
    out = generate_ids(model, [1, 2, 3], 20, temperature=0, use_cache=False)
    assert out == greedy_reference(model, [1, 2, 3], 20)  # 23 tokens > context 8: the window slides
    assert list(stream_ids(model, [1, 2, 3], 20, temperature=0)) == generate_ids(model, [1, 2, 3], 20, temperature=0)


def test_top_k_one_is_greedy(model):
    out = generate_ids(model, [4], 12, temperature=1.5, top_k=1, seed=0)
    assert out == generate_ids(model, [4], 12, temperature=0)


def test_seeded_sampling_is_reproducible(model):
    for use_cache in (True, False):
        a = generate_ids(model, [5], 30, temperature=1.0, seed=123, use_cache=use_cache)
        b = generate_ids(model, [5], 30, temperature=1.0, seed=123, use_cache=use_cache)
        c = generate_ids(model, [5], 30, temperature=1.0, seed=124, use_cache=use_cache)
        assert a == b and a != c
    assert list(stream_ids(model, [5], 30, temperature=1.0, seed=123)) == generate_ids(model, [5], 30, seed=123,
                                                                                         temperature=1.0)


def test_generation_stops_at_a_stop_id(model):
    first = generate_ids(model, [1], 1, temperature=0)[0]
    assert generate_ids(model, [1], 50, temperature=0, stop_ids=[first]) == [first]


def test_rows_stop_on_their_own_and_the_others_go_on():
    model = random_model("learned")
    prompts = [[1, 2], [9], [30, 31, 32]]
    alone = [generate_ids(model, p, 12, temperature=0) for p in prompts]
    stop = alone[1][3]  # row 1 stops at its 4th token
    out = generate_ids(model, prompts, 12, temperature=0, stop_ids=[stop])
    for got, full in zip(out, alone, strict=True):
        expected = full[:full.index(stop) + 1] if stop in full else full
        assert got == expected
    assert len(out[1]) == 4


def test_vocab_size_masks_padded_embedding_rows(model):
    ids = generate_ids(model, [1, 2], 200, temperature=3.0, seed=0, vocab_size=10)
    assert max(ids) < 10


# --------------------------------------------------------------------------- beam search


@pytest.mark.parametrize("pos", POSITIONS)
def test_beam_search_with_one_beam_is_greedy(pos):
    model = random_model(pos)
    for n in (10, 3 * model.cfg.context):
        (beam,) = beam_search(model, [1, 2, 3], max_new_tokens=n, beams=1)
        assert beam.ids == generate_ids(model, [1, 2, 3], n, temperature=0)
    (beam,) = beam_search(model, [1, 2, 3], max_new_tokens=10, beams=1, use_cache=False)
    assert beam.ids == greedy_reference(model, [1, 2, 3], 10)


@pytest.mark.parametrize("pos", POSITIONS)
def test_beam_search_reorders_the_cache(pos):
    model = random_model(pos)
    options = dict(max_new_tokens=12, beams=4, num_return_sequences=4)
    cached = beam_search(model, [7, 8], **options)
    uncached = beam_search(model, [7, 8], use_cache=False, **options)
    assert [b.ids for b in cached] == [b.ids for b in uncached]
    assert [b.score for b in cached] == pytest.approx([b.score for b in uncached], abs=1e-4)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_scores_are_length_normalised_log_probabilities(length_penalty):
    model = random_model("rope")
    greedy = generate_ids(model, [4, 5], 10, temperature=0)
    stop = greedy[4]  # hypotheses end at different lengths
    beams = beam_search(model, [4, 5], max_new_tokens=10, beams=5, num_return_sequences=5, stop_ids=[stop],
                        length_penalty=length_penalty)
    assert len(beams) == 5 and len({tuple(b.ids) for b in beams}) == 5
    assert [b.score for b in beams] == sorted((b.score for b in beams), reverse=True)
    for b in beams:
        assert b.logprob == pytest.approx(sequence_logprob(model, [4, 5], b.ids), abs=1e-4)
        assert b.score == pytest.approx(b.logprob / len(b.ids) ** length_penalty, abs=1e-4)
        assert stop not in b.ids[:-1]
    if length_penalty == 0.0:  # raw sums favour ending early
        assert any(b.ids[-1] == stop for b in beams)


def test_a_larger_length_penalty_favours_longer_sequences():
    model = random_model("rope")
    stop = generate_ids(model, [4, 5], 10, temperature=0)[4]

    def lengths(lp):
        return [len(b.ids) for b in beam_search(model, [4, 5], max_new_tokens=10, beams=5, num_return_sequences=5,
                                                stop_ids=[stop], length_penalty=lp)]

    short, long = lengths(0.0), lengths(2.0)
    assert sum(long) > sum(short) and long[0] >= short[0]


def test_beam_search_finds_a_sequence_at_least_as_likely_as_greedy(trained_run):
    run = tinylm.load(trained_run, device="cpu", dtype="float32")
    for text in ("ROMEO", "To be, or not", "The king"):
        prompt = run.tokenizer.encode(text)
        n = run.model.cfg.context - len(prompt)
        greedy = generate_ids(run.model, prompt, n, temperature=0)
        (best,) = beam_search(run.model, prompt, max_new_tokens=n, beams=4)
        assert best.logprob == pytest.approx(sequence_logprob(run.model, prompt, best.ids), abs=1e-3)
        assert best.logprob >= sequence_logprob(run.model, prompt, greedy) - 1e-4


# --------------------------------------------------------------------------- logit filters


@given(logits=st.lists(st.floats(-20, 20), min_size=2, max_size=40), k=st.integers(1, 40),
       seed=st.integers(0, 2**31))
@settings(max_examples=150, deadline=None)
def test_top_k_samples_only_among_the_k_likeliest(logits, k, seed):
    t = torch.tensor([logits])
    k = min(k, len(logits))
    token = int(sample_next(t, temperature=1.0, top_k=k, generator=torch.Generator().manual_seed(seed)))
    kth = torch.topk(t[0], k).values[-1]
    assert t[0, token] >= kth


@given(logits=st.lists(st.floats(-10, 10), min_size=1, max_size=40), p=st.floats(0.001, 1.0))
@settings(max_examples=300, deadline=None)
def test_top_p_keeps_the_smallest_set_whose_mass_reaches_p(logits, p):
    t = torch.tensor([logits], dtype=torch.float64)
    kept = torch.isfinite(top_p_filter(t, p))[0]
    probs = torch.softmax(t, dim=-1)[0]
    assert kept.any()
    mass = float(probs[kept].sum())
    assert mass >= p - 1e-9  # reaches p
    assert mass - float(probs[kept].min()) < p + 1e-9  # without its least likely token it would not
    if (~kept).any():
        assert probs[kept].min() >= probs[~kept].max()  # the likeliest tokens


@given(logits=st.lists(st.floats(-10, 10), min_size=1, max_size=40), min_p=st.floats(0.0, 0.99))
@settings(max_examples=200, deadline=None)
def test_min_p_drops_tokens_below_min_p_times_the_top_probability(logits, min_p):
    t = torch.tensor([logits], dtype=torch.float64)
    kept = torch.isfinite(min_p_filter(t, min_p))[0]
    probs = torch.softmax(t, dim=-1)[0]
    assert torch.equal(kept, probs >= min_p * probs.max())
    assert kept[probs.argmax()]


def test_top_p_stops_as_soon_as_the_mass_reaches_p():
    logits = torch.log(torch.tensor([[0.25, 0.5, 0.125, 0.125]], dtype=torch.float64))
    kept = [torch.isfinite(top_p_filter(logits, p))[0].tolist() for p in (0.5, 0.75, 0.8, 1.0)]
    assert kept == [[False, True, False, False], [True, True, False, False], [True, True, True, False],
                    [True, True, True, True]]


def test_top_p_and_min_p_limit_what_is_sampled():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, generator=g, top_p=0.75)) for _ in range(300)}
    assert draws == {0, 1}  # 0.5 < 0.75 <= 0.5 + 0.3
    draws = {int(sample_next(logits, 1.0, generator=g, min_p=0.25)) for _ in range(300)}
    assert draws == {0, 1, 2}  # 0.05 < 0.25 * 0.5


def test_repetition_penalty_lowers_the_probability_of_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False]])
    penalised = apply_repetition_penalty(logits, seen, 2.0)
    assert penalised.tolist() == [[1.0, -2.0, 0.5, 3.0]]
    before, after = torch.softmax(logits, -1)[0], torch.softmax(penalised, -1)[0]
    assert (after[:2] < before[:2]).all() and (after[2:] > before[2:]).all()
    # greedy: the penalty turns the likeliest seen token into the likeliest unseen one
    assert int(sample_next(logits, 0, seen=torch.tensor([[False, False, False, True]]), repetition_penalty=3.0)) == 0


def test_repetition_penalty_makes_generation_repeat_less():
    model = random_model("sinusoidal")
    plain = generate_ids(model, [1, 2, 3], 15, temperature=0)
    penalised = generate_ids(model, [1, 2, 3], 15, temperature=0, repetition_penalty=50.0)
    assert len(set(penalised)) > len(set(plain))
    assert len(set(penalised)) >= 12


# --------------------------------------------------------------------------- text: streaming, stop strings


def test_stream_text_holds_back_split_utf8():
    # a byte-level decode in which a multi-byte character arrives in two tokens
    pieces = {1: b"h", 2: b"\xc3", 3: b"\xa9", 4: b"!"}

    def decode(ids):
        return b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")

    out = list(stream_text([1, 2, 3, 4], decode))
    assert out == ["h", "é", "!"]
    assert "".join(stream_text([2], decode)) == "\ufffd"  # flushed at the end


def test_stream_text_spaces_the_first_piece_as_in_the_whole_text():
    from tinylm.tokenizers.word import detokenize

    words = {1: "once", 2: "upon", 3: "a", 4: "time", 5: "."}

    def decode(ids):
        return detokenize([words[i] for i in ids])

    assert "".join(stream_text([2, 3, 4, 5], decode, prefix=[1])) == " upon a time."  # after "once"
    assert "".join(stream_text([5], decode, prefix=[1, 2])) == "."


@given(text=st.text(alphabet="abc\n", max_size=40), cuts=st.lists(st.integers(0, 40), max_size=8),
       stops=st.lists(st.text(alphabet="abc\n", min_size=1, max_size=4), min_size=1, max_size=3))
@example(text="\naa", cuts=[2], stops=["a", "\naa"])  # a longer stop string that begins earlier wins
@settings(max_examples=300, deadline=None)
def test_stop_filter_streams_the_text_up_to_the_first_stop_string(text, cuts, stops):
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    assert "".join(StopFilter(stops)(pieces)) == cut_at_stop(text, stops)


def test_stop_strings_cut_the_text_and_stop_generating(trained_run):
    run = tinylm.load(trained_run, device="cpu", dtype="float32")
    full = run.generate("ROMEO", max_new_tokens=60, temperature=0)
    stop = full[20:23]
    expected = full[:full.index(stop)]
    (completion,) = run.complete("ROMEO", max_new_tokens=60, temperature=0, stop=[stop, "\x00never"])
    assert completion.text == expected
    assert len(completion.ids) < 60  # generation ended at the stop string
    assert "".join(run.stream("ROMEO", max_new_tokens=60, temperature=0, stop=[stop])) == expected
    assert run.generate("ROMEO", max_new_tokens=60, beams=2, stop=[stop]) == cut_at_stop(
        run.generate("ROMEO", max_new_tokens=60, beams=2), [stop])


# --------------------------------------------------------------------------- the Run API


def test_loaded_run_generates_and_streams(trained_run):
    run = tinylm.load(trained_run)
    text = run.generate("ROMEO", max_new_tokens=40, temperature=0.8, seed=1)
    assert len(text) == 40
    assert "".join(run.stream("ROMEO", max_new_tokens=40, temperature=0.8, seed=1)) == text
    assert len(run.generate("", max_new_tokens=5, seed=0)) == 5  # empty prompt starts from a newline
    long = run.generate("ROMEO", max_new_tokens=3 * 32, temperature=0)  # 3x the context
    assert len(long) == 96
    # tokens 1..28 are predicted from at most 32 tokens: the sliding windows agree there
    assert long[:28] == run.generate("ROMEO", max_new_tokens=96, temperature=0, use_cache=False)[:28]


def test_run_generates_a_batch_of_prompts(trained_run):
    run = tinylm.load(trained_run, device="cpu", dtype="float32")
    prompts = ["ROMEO", "To be", "", "HAMLET.\nWho's there?"]
    batch = run.generate(prompts, max_new_tokens=50, temperature=0)
    assert batch == [run.generate(p, max_new_tokens=50, temperature=0) for p in prompts]
    assert run.generate(prompts[:2], max_new_tokens=10, seed=3) == run.generate(prompts[:2], max_new_tokens=10,
                                                                                seed=3)
    best = run.generate("ROMEO", max_new_tokens=12, beams=3, num_return_sequences=2)
    assert isinstance(best, list) and len(best) == 2 and best[0] != best[1]
    assert best[0] == run.generate("ROMEO", max_new_tokens=12, beams=3)
    assert len(run.generate(prompts[:2], max_new_tokens=8, beams=2, num_return_sequences=2)) == 2


def test_prompt_problems_warn(trained_run):
    run = tinylm.load(trained_run)
    with pytest.warns(tinylm.console.TinylmWarning, match="not in the vocabulary"):
        run.generate("ROMEO 🙂", max_new_tokens=2, seed=0)
    with pytest.warns(tinylm.console.TinylmWarning, match="more than the context"):
        run.generate("x" * 100, max_new_tokens=2, seed=0)
    with pytest.raises(ConfigError, match="more than the context"):
        run.generate("x" * 100, max_new_tokens=2, truncate=False)


@pytest.mark.parametrize("options, fragment", [
    ({"top_p": 0.0}, "top_p must be in (0, 1]"),
    ({"top_p": 1.5}, "top_p must be in (0, 1]"),
    ({"beams": 0}, "beams must be in [1, 1024]"),
    ({"min_p": 1.0}, "min_p must be in [0, 1)"),
    ({"min_p": -0.1}, "min_p must be in [0, 1)"),
    ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
    ({"beams": 2, "num_return_sequences": 3}, "must not exceed beams"),
    ({"max_new_tokens": -1}, "max_new_tokens must be >= 0"),
    ({"stop": [""]}, "stop strings must be non-empty"),
    ({"top_pp": 0.5}, "did you mean 'top_p'"),
])
def test_bad_options_are_one_line_errors(trained_run, options, fragment):
    run = tinylm.load(trained_run)
    with pytest.raises(ConfigError, match="^[^\n]*$") as error:
        run.generate("ROMEO", **options)
    assert fragment in str(error.value)
    with pytest.raises(ConfigError):
        GenerationConfig(**{k: v for k, v in options.items() if k != "top_pp"} or {"top_p": 2.0}).validate()


def test_sample_config_extends_the_generation_config():
    cfg = SampleConfig(top_p=0.9, beams=2, num_samples=3)
    assert isinstance(cfg, GenerationConfig) and cfg.validate() is cfg
    assert cfg.replace(seed=5) == GenerationConfig(top_p=0.9, beams=2, seed=5)
    with pytest.raises(ConfigError, match="num_samples"):
        SampleConfig(num_samples=0).validate()


# --------------------------------------------------------------------------- the CLI


def test_sample_verbose_prints_ids_tokens_and_text(trained_run, capsys):
    run = tinylm.load(trained_run, device="cpu", dtype="float32")
    assert main(["sample", str(trained_run), "--prompt", "ROMEO", "--max-new-tokens", "6", "--temperature", "0",
                 "--verbose", "--device", "cpu", "--dtype", "float32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    prompt_ids = run.tokenizer.encode("ROMEO")
    (completion,) = run.complete("ROMEO", max_new_tokens=6, temperature=0)
    assert lines[0] == f"prompt ids (5): {prompt_ids}"
    assert lines[1] == "prompt tokens: ['R', 'O', 'M', 'E', 'O']"
    assert lines[2] == f"generated ids (6): {completion.ids}"
    assert lines[3] == "text:"
    assert "\n".join(lines[4:]) == "ROMEO" + completion.text


def test_sample_flags_stream_and_print_alike(trained_run, capsys):
    base = ["sample", str(trained_run), "--prompt", "HAMLET", "--max-new-tokens", "26", "--seed", "2",
            "--top-p", "0.9", "--min-p", "0.05", "--repetition-penalty", "1.3", "--device", "cpu"]
    outputs = []
    for extra in ([], ["--stream"], ["--no-cache"]):
        assert main(base + extra) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2]  # 32 tokens fit the context 32: the cache changes nothing
    assert outputs[0].startswith("HAMLET") and len(outputs[0]) == len("HAMLET") + 26 + 1

    run = tinylm.load(trained_run, device="cpu")
    text = run.generate("HAMLET", max_new_tokens=30, temperature=0)
    stop = text[10:12]
    assert main(["sample", str(trained_run), "--prompt", "HAMLET", "--max-new-tokens", "30", "--temperature", "0",
                 "--stop", stop, "--stop", "QQQ", "--stream", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == "HAMLET" + text[:text.index(stop)] + "\n"

    assert main(["sample", str(trained_run), "--prompt", "HAMLET", "--max-new-tokens", "12", "--beams", "3",
                 "--num-return-sequences", "2", "--length-penalty", "0.5", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.split("\n" + "-" * 40 + "\n")
    assert len(out) == 2 and all(o.startswith("HAMLET") for o in out)


@pytest.mark.parametrize("flags, fragment", [
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--beams", "0"], "beams must be in [1, 1024]"),
    (["--min-p", "1"], "min_p must be in [0, 1)"),
    (["--repetition-penalty", "-1"], "repetition_penalty must be > 0"),
    (["--beams", "2", "--num-return-sequences", "3"], "must not exceed beams"),
    (["--num-samples", "0"], "num_samples must be >= 1"),
    (["--beams", "two"], "expects an integer"),
])
def test_sample_flag_errors_are_one_line(trained_run, capsys, flags, fragment):
    assert main(["sample", str(trained_run), "--max-new-tokens", "3", *flags]) == 1
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1

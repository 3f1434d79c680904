"""The generation engine (continuous batching, what every decode runs on) and the per-row KV cache under it.

Rows that join and leave between steps must generate what they would generate alone: bit for bit
when a row is alone in the batch (prefill, refills, one-row steps), within float32 rounding of the
logits when it shares the batch (then the sampled tokens still agree)."""

from __future__ import annotations

import pytest
import torch

from tinylm.config import ModelConfig
from tinylm.generation import GenerationConfig, generate_ids
from tinylm.model import GPT
from tinylm.generation import engine as engine_module
from tinylm.generation.engine import Closing, Engine, Event, QueueFull, Request, Row

pytestmark = pytest.mark.usefixtures("torch_one_thread")

VOCAB = 61
ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?"[:VOCAB]


def decode(ids) -> str:
    return "".join(ALPHABET[i] for i in ids)


def tiny_model(context: int = 24, **options) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, context=context, n_layer=2, n_head=4, d_model=32, **options)
    cfg.validate()
    return GPT(cfg).eval()


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


class Collect:
    """The events of one request, per row."""

    def __init__(self, rows: int):
        self.text = [""] * rows
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.finish: list[str | None] = [None] * rows

    def __call__(self, event: Event) -> None:
        self.text[event.row] += event.text
        self.tokens[event.row] += [t.token for t in event.tokens]
        if event.finish:
            self.finish[event.row] = event.finish

    @property
    def done(self) -> bool:
        return all(self.finish)


def submit(engine: Engine, rows: list[Row]) -> Collect:
    out = Collect(len(rows))
    engine.submit(Request(rows, out))
    return out


def drain(engine: Engine, limit: int = 2000) -> None:
    for _ in range(limit):
        if not (engine.running or engine.waiting):
            return
        engine.step()
    raise AssertionError("the engine did not finish")


def make_engine(model: GPT, **options) -> Engine:
    return Engine(model, decode, vocab_size=VOCAB, device=torch.device("cpu"), **options)


# --------------------------------------------------------------------------- the per-row cache


@pytest.mark.parametrize("variant", [dict(pos="learned"), dict(pos="rope", n_kv_head=2),
                                     dict(pos="sinusoidal", norm="rmsnorm", mlp="swiglu"),
                                     dict(pos="none", qk_norm=True, attention="manual")])
def test_per_row_cache_rows_at_different_positions_decode_as_if_alone(variant):
    model = tiny_model(context=32, **variant)
    prompts = [prompt(n, seed) for seed, n in enumerate((3, 7, 12))]
    steps = 5
    with torch.no_grad():
        reference, fed = [], []  # per prompt: B=1 logits after the prompt and after each fed token
        for p in prompts:
            cache = model.new_cache(1)
            logits = [model(torch.tensor([p]), cache=cache)[0][:, -1]]
            tokens = prompt(steps, len(p) + 100)
            for t in tokens:
                logits.append(model(torch.tensor([[t]]), cache=cache)[0][:, -1])
            reference.append(logits)
            fed.append(tokens)

        cache = model.new_cache(3).rows(0, 3)  # per-row
        got = []
        for i, p in enumerate(prompts):  # prefill each row alone into its slot
            got.append([model(torch.tensor([p]), cache=cache.rows(i, i + 1, length=0))[0][:, -1]])
            cache.lengths[i] = len(p)
        assert cache.lengths.tolist() == [3, 7, 12]
        for step in range(steps):  # then decode all rows together
            idx = torch.tensor([[fed[i][step]] for i in range(3)])
            out = model(idx, cache=cache)[0][:, -1]
            for i in range(3):
                got[i].append(out[i:i + 1])
        assert cache.lengths.tolist() == [3 + steps, 7 + steps, 12 + steps]

        lone = model.new_cache(3)  # one row alone in a per-row cache: the B=1 computation
        p = prompts[1]
        first = model(torch.tensor([p]), cache=lone.rows(2, 3, length=0))[0][:, -1]
        lone.lengths[2] = len(p)
        alone = [first] + [model(torch.tensor([[t]]), cache=lone.rows(2, 3))[0][:, -1] for t in fed[1]]

    for i in range(3):
        assert torch.equal(got[i][0], reference[i][0])  # prefill alone: bit-identical
        for step in range(1, steps + 1):  # batched decode: float32 rounding only
            torch.testing.assert_close(got[i][step], reference[i][step], rtol=0, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(alone, reference[1], strict=True))


# --------------------------------------------------------------------------- the engine


def greedy(n: int) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=n, temperature=0).validate()


def test_rows_joining_between_steps_generate_what_they_generate_alone():
    model = tiny_model(context=24)
    engine = make_engine(model, max_batch=8)
    prompts = [prompt(n, 10 + n) for n in (4, 9, 30, 2)]  # 30 > context: truncated to its last 24 tokens
    lengths = [40, 12, 20, 35]  # past the context: windows slide
    outs = []
    for i, (p, n) in enumerate(zip(prompts, lengths, strict=True)):
        outs.append(submit(engine, [Row(p[-24:], greedy(n))]))
        for _ in range(i + 2):  # rows join while others are mid-generation
            engine.step()
    drain(engine)
    for p, n, out in zip(prompts, lengths, outs, strict=True):
        expected = generate_ids(model, p, greedy(n))
        assert out.tokens[0] == expected
        assert out.text[0] == decode(expected) and out.finish[0] == "length"


def test_a_lone_seeded_row_is_bit_identical_to_generate_ids_also_past_the_context():
    model = tiny_model(context=16)
    cfg = GenerationConfig(max_new_tokens=50, temperature=1.0, top_k=20, top_p=0.9, min_p=0.02,
                           repetition_penalty=1.3, seed=123).validate()
    p = prompt(10, 3)
    out = submit(engine := make_engine(model), [Row(p, cfg)])
    drain(engine)
    assert out.tokens[0] == generate_ids(model, p, cfg)


def test_suppressed_ids_are_never_generated_as_in_generate_ids():
    """The tokenizer's suppressed ids (e.g. a char tokenizer's unknown-character id) are masked in
    the server's sampling exactly as in `generate_ids`: same seeded tokens, and never those ids."""
    model = tiny_model()
    cfg = GenerationConfig(max_new_tokens=40, temperature=1.5, seed=7).validate()
    banned = list(range(0, VOCAB, 3))
    p = prompt(6, 4)
    engine = make_engine(model, suppress_ids=banned)
    outs = [submit(engine, [Row(p, cfg.replace(seed=7 + i))]) for i in range(3)]
    drain(engine)
    for i, out in enumerate(outs):
        assert out.tokens[0] == generate_ids(model, p, cfg.replace(seed=7 + i), suppress_ids=banned)
        assert not set(out.tokens[0]) & set(banned)
    own = submit(engine, [Row(p, cfg.replace(suppress_tokens=[1]))])  # a row's own list replaces the default
    drain(engine)
    assert own.tokens[0] == generate_ids(model, p, cfg.replace(suppress_tokens=[1]), suppress_ids=banned)


class Recording(Engine):
    """Records the logits each row samples from, and the batch size of every forward."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.logits: dict[int, list[torch.Tensor]] = {}
        self.batches: list[int] = []
        self.calls: list[tuple[int, bool]] = []  # (rows, whether a prefill of admitted rows)
        self.prefilling = False

    def _sample_all(self, seqs):
        for seq in seqs:
            self.logits.setdefault(id(seq.request), []).append(seq.next_logits[:, :self.vocab_size].clone())
        super()._sample_all(seqs)

    def _prefill(self, admitted):
        self.prefilling = True
        super()._prefill(admitted)
        self.prefilling = False

    def _forward(self, idx, cache, adapters, last=None):
        self.batches.append(idx.size(0))
        self.calls.append((idx.size(0), self.prefilling))
        return super()._forward(idx, cache, adapters, last)


def test_a_seeded_row_among_16_others_samples_what_it_samples_alone():
    """The seeded row's logits differ from its lone run by float32 rounding only (the batch's matrix
    products sum in another order), and its per-request generator draws the same tokens."""
    model = tiny_model(context=64)
    engine = Recording(model, decode, vocab_size=VOCAB, device=torch.device("cpu"), max_batch=17)
    others = [submit(engine, [Row(prompt(3 + i % 7, 50 + i), GenerationConfig(max_new_tokens=45,
                                                                                temperature=1.0).validate())])
              for i in range(16)]
    for _ in range(3):
        engine.step()
    cfg = GenerationConfig(max_new_tokens=30, temperature=0.9, top_k=30, top_p=0.95, repetition_penalty=1.1,
                           seed=2024).validate()
    p = prompt(9, 77)
    request = Request([Row(p, cfg)], target := Collect(1))
    engine.submit(request)
    while not target.done:
        engine.step()
    assert all(not o.done for o in others)  # the 16 others were decoding the whole time
    assert max(engine.batches) == 17
    drain(engine)

    assert target.tokens[0] == generate_ids(model, p, cfg)
    with torch.no_grad():  # the same tokens fed to a lone cache: the logits the row would have had alone
        cache = model.new_cache(1)
        alone = [model.head(model.features(torch.tensor([p]), cache=cache)[:, -1])]  # (the head on the last only)
        alone += [model(torch.tensor([[t]]), cache=cache)[0][:, -1] for t in target.tokens[0][:-1]]
    seen = engine.logits[id(request)]
    assert torch.equal(seen[0], alone[0])  # the prefill ran alone
    worst = max(float((a - b).abs().max()) for a, b in zip(seen, alone, strict=True))
    assert worst < 1e-4, worst
    # relative to the largest logit: float32 rounding (docs/serving.md states the measured size, with
    # bench/batch_exactness.py's rates of changed tokens)
    relative = max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(seen, alone, strict=True))
    assert relative < 1e-5, relative


@pytest.mark.parametrize("budget", [4096, 30])
def test_rows_admitted_together_are_prefilled_together(budget, monkeypatch):
    monkeypatch.setattr(engine_module, "PREFILL_TOKENS", budget)  # 30: several prefill forwards
    model = tiny_model(context=24)
    engine = Recording(model, decode, vocab_size=VOCAB, device=torch.device("cpu"), max_batch=8)
    prompts = [prompt(n, 200 + n) for n in (5, 12, 3, 24, 8, 6)]
    requests = [Request([Row(p, greedy(30))], Collect(1)) for p in prompts]
    for r in requests:
        engine.submit(r)
    drain(engine)
    together = [rows for rows, prefill in engine.calls if prefill]
    assert sum(together) == len(prompts) and len(together) == (1 if budget == 4096 else 4)
    with torch.no_grad():
        for p, r in zip(prompts, requests, strict=True):
            assert r.on_event.tokens[0] == generate_ids(model, p, greedy(30))
            alone = model(torch.tensor([p]), cache=model.new_cache(1))[0][:, -1]
            torch.testing.assert_close(engine.logits[id(r)][0], alone, rtol=0, atol=1e-5)


def test_stop_strings_and_stop_ids_end_a_row():
    model = tiny_model(context=32)
    cfg = GenerationConfig(max_new_tokens=30, temperature=1.0, seed=5).validate()
    p = prompt(5, 8)
    free = submit(engine := make_engine(model), [Row(p, cfg)])
    drain(engine)
    text = free.text[0]
    stop = text[6:8]
    cut = text[:text.index(stop)]
    stopped = submit(engine, [Row(p, cfg.replace(stop=[stop, "never"]))])
    drain(engine)
    assert stopped.text[0] == cut and stopped.finish[0] == "stop"
    assert len(stopped.tokens[0]) < 30

    eot = free.tokens[0][3]  # the 4th sampled id as end-of-text: it ends the row and is not text
    ending = Engine(model, decode, vocab_size=VOCAB, device=torch.device("cpu"), stop_ids=[eot])
    out = submit(ending, [Row(p, cfg)])
    drain(ending)
    first = free.tokens[0].index(eot)
    assert out.tokens[0] == free.tokens[0][:first + 1] and out.finish[0] == "stop"
    assert out.text[0] == decode(free.tokens[0][:first])


def test_a_cancelled_request_leaves_at_the_next_step():
    model = tiny_model()
    engine = make_engine(model, max_batch=4)
    keep = submit(engine, [Row(prompt(4, 1), greedy(200))])
    request = Request([Row(prompt(4, 2), greedy(200)), Row(prompt(5, 3), greedy(200))], Collect(2))
    engine.submit(request)
    waiting = Request([Row(prompt(3, 4), greedy(200))], Collect(1))
    for _ in range(3):
        engine.step()
    assert len(engine.running) == 3
    engine.submit(waiting)
    request.cancel()
    waiting.cancel()
    engine.step()
    assert len(engine.running) == 1 and not engine.waiting
    assert engine.running[0].request.on_event is keep
    drain(engine)
    assert keep.finish == ["length"] and len(keep.tokens[0]) == 200


def test_closing_an_events_generator_early_admits_nobody_unprefilled():
    """`events()` left early (the caller stops iterating) takes its own rows out and admits nobody:
    a row waiting meanwhile is admitted and prefilled by the next `step`, so it generates what it
    generates alone (before: the generator's `finally` admitted it outside `step`, unprefilled)."""
    model = tiny_model()
    engine = make_engine(model, max_batch=1)
    first = engine.events([Row(prompt(5, 1), greedy(40))])
    next(first)  # the row runs and holds the only slot
    waiting = submit(engine, [Row(prompt(6, 2), greedy(12))])
    assert engine.load == (1, 1)
    first.close()
    assert engine.load == (0, 1)  # the waiting row still waits: only `step` admits (and prefills)
    drain(engine)
    assert waiting.tokens[0] == generate_ids(model, prompt(6, 2), greedy(12)) and waiting.finish == ["length"]


def test_at_most_max_batch_rows_decode_and_the_queue_is_bounded():
    model = tiny_model()
    engine = Recording(model, decode, vocab_size=VOCAB, device=torch.device("cpu"), max_batch=3, max_queue=10)
    outs = [submit(engine, [Row(prompt(3, i), greedy(5 + i))]) for i in range(10)]
    with pytest.raises(QueueFull):
        engine.submit(Request([Row(prompt(3, 99), greedy(5))], Collect(1)))
    peak = 0
    while engine.running or engine.waiting:
        engine.step()
        peak = max(peak, len(engine.running))
    assert peak == 3 and max(engine.batches) == 3
    assert all(o.finish == ["length"] and len(o.tokens[0]) == 5 + i for i, o in enumerate(outs))


def test_a_failing_forward_ends_its_rows_and_the_engine_goes_on():
    model = tiny_model()

    def activate(adapters):
        names = adapters if isinstance(adapters, list) else [adapters]
        if "broken" in names:
            raise RuntimeError("adapter weights missing")

    engine = make_engine(model, activate=activate)
    engine.start()
    try:
        import threading

        done = threading.Event()
        bad = Collect(1)
        good = Collect(1)

        def on_bad(event):
            bad(event)
            if event.finish:
                done.set()

        engine.submit(Request([Row(prompt(3, 1), greedy(5), adapter="broken")], on_bad))
        assert done.wait(30)
        assert bad.finish == ["error"]
        done.clear()

        def on_good(event):
            good(event)
            if event.finish:
                done.set()

        engine.submit(Request([Row(prompt(3, 1), greedy(5))], on_good))
        assert done.wait(30)
        assert good.finish == ["length"] and good.tokens[0] == generate_ids(model, prompt(3, 1), greedy(5))
    finally:
        engine.stop()


def test_close_lets_rows_run_until_the_deadline_then_ends_them_as_shutdown():
    """`Engine.close(seconds)` (the server's shutdown): no new rows; rows running or waiting go on
    until the deadline (a short one finishes normally), then each ends with finish "shutdown", its
    text so far flushed and a message; nothing is left in the engine."""
    import threading
    import time

    model = tiny_model()
    engine = make_engine(model, max_batch=2)
    finished = threading.Event()
    outs, events = [], []

    def collect(out):
        def on_event(event):
            out(event)
            events.append(event)
            if all(o.done for o in outs):
                finished.set()
        return on_event

    rows = [Row(prompt(3, i), greedy(100_000 if i else 20)) for i in range(4)]  # 2 run, 2 wait
    for row in rows:
        outs.append(Collect(1))
        engine.submit(Request([row], collect(outs[-1])))
    engine.start()
    try:
        while engine.steps < 3:
            time.sleep(0.01)
        engine.close(0.5)
        start = time.monotonic()
        with pytest.raises(Closing):
            engine.submit(Request([Row(prompt(3, 9), greedy(5))], Collect(1)))
        assert finished.wait(30)
        assert time.monotonic() - start >= 0.45
        assert outs[0].finish == ["length"] and len(outs[0].tokens[0]) == 20  # done within the deadline
        assert [o.finish[0] for o in outs[1:]] == ["shutdown"] * 3 and engine.ended == 3
        ended = [e for e in events if e.finish == "shutdown"]
        assert all(e.error and "shutting down" in e.error for e in ended)
        assert {e.completion_tokens for e in ended} != {0}  # the running one had generated tokens
        assert engine.load == (0, 0)
    finally:
        engine.stop()

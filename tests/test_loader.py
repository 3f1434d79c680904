import io

import numpy as np
import pytest
import torch

from tinylm.data import PermutationWindows, RandomWindows, make_loader
from tinylm.errors import CheckpointError, DataError


N, CONTEXT, BATCH = 1000, 16, 4


def corpus(n=N):
    """A corpus whose token at position i is i, so a window's first token is its start."""
    return np.arange(n, dtype=np.uint32)


def starts(x):
    return x[:, 0].tolist()


def draw(loader, k):
    return [loader.next_batch() for _ in range(k)]


def same_batches(a, b):
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb)
                                    for (xa, ya), (xb, yb) in zip(a, b, strict=True))


def through_disk(state):
    """The state as train_state.pt gives it back."""
    buffer = io.BytesIO()
    torch.save({"loader": state}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)["loader"]


def one_epoch_of_starts(loader):
    """Starts of the windows of the loader's current epoch, which it must be at the beginning of."""
    assert loader.batch_size == 1 and loader.state_dict()["index"] == 0
    return [starts(loader.next_batch()[0])[0] for _ in range(loader.n_windows)]


@pytest.mark.parametrize("n_tokens, context", [(N, CONTEXT), (1001, 10), (17, 16), (40, 16), (5000, 7)])
def test_permutation_targets_every_token_of_the_epoch_once(n_tokens, context):
    loader = PermutationWindows(corpus(n_tokens), context=context, batch_size=1, seed=5)
    for epoch in range(3):
        phase, n = loader.phase, loader.n_windows
        assert 0 <= phase < context and n == (n_tokens - 1 - phase) // context >= 1
        assert n_tokens - 1 - phase - n * context < context  # no room for another window
        window_starts = one_epoch_of_starts(loader)
        assert sorted(window_starts) == [phase + i * context for i in range(n)]
        targets = sorted(t for s in window_starts for t in range(s + 1, s + context + 1))
        assert targets == list(range(phase + 1, phase + n * context + 1))  # each exactly once
        assert loader.state_dict() == {"epoch": epoch + 1, "index": 0}


@pytest.mark.parametrize("batch_size", [3, 7, 64])
def test_batches_run_on_into_the_next_epoch(batch_size):
    single = PermutationWindows(corpus(), context=CONTEXT, batch_size=1, seed=5)
    stream = [s for _ in range(4) for s in one_epoch_of_starts(single)]
    batched = PermutationWindows(corpus(), context=CONTEXT, batch_size=batch_size, seed=5)
    got = []
    while len(got) < len(stream):
        x, _ = batched.next_batch()
        assert x.shape == (batch_size, CONTEXT)
        got += starts(x)
    assert got[:len(stream)] == stream  # the same windows in the same order, whatever the batch size


def test_permutation_batches_are_shifted_windows():
    loader = PermutationWindows(corpus(), context=CONTEXT, batch_size=BATCH, seed=1)
    for x, y in draw(loader, 100):  # several epochs
        assert x.shape == y.shape == (BATCH, CONTEXT) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert torch.equal(x - x[:, :1], torch.arange(CONTEXT).expand(BATCH, -1))  # contiguous windows
        assert torch.equal(y - x, torch.ones_like(x)) and int(y.max()) < N


def test_epochs_differ_in_phase_and_order_and_seeds_decide_everything():
    loader = PermutationWindows(corpus(), context=CONTEXT, batch_size=1, seed=7)
    epochs = []
    for _ in range(6):
        phase = loader.phase
        epochs.append((phase, [(s - phase) // CONTEXT for s in one_epoch_of_starts(loader)]))
    assert len({phase for phase, _ in epochs}) > 1
    orders = [order for _, order in epochs]
    assert all(a != b for i, a in enumerate(orders) for b in orders[i + 1:])
    assert all(order != sorted(order) for order in orders)  # shuffled, not sequential

    same = [PermutationWindows(corpus(), context=CONTEXT, batch_size=BATCH, seed=7) for _ in range(2)]
    assert same_batches(draw(same[0], 150), draw(same[1], 150))
    other = PermutationWindows(corpus(), context=CONTEXT, batch_size=BATCH, seed=8)
    assert not same_batches(draw(PermutationWindows(corpus(), CONTEXT, BATCH, 7), 5), draw(other, 5))


def test_epoch_progress_and_batches_that_straddle_epochs():
    loader = PermutationWindows(corpus(), context=CONTEXT, batch_size=BATCH, seed=2)
    n0 = loader.n_windows
    assert loader.epoch == 0.0
    loader.next_batch()
    assert loader.epoch == pytest.approx(BATCH / n0)
    while loader.state_dict()["epoch"] == 0:
        loader.next_batch()
    assert 1.0 <= loader.epoch < 1.0 + BATCH / loader.n_windows
    if n0 % BATCH:  # the last batch of epoch 0 ran on into epoch 1
        assert loader.state_dict() == {"epoch": 1, "index": BATCH - (n0 - BATCH) % BATCH}


@pytest.mark.parametrize("sampling, k", [("random", 3), ("permutation", 3), ("permutation", 58),
                                         ("permutation", 61), ("permutation", 200)])
def test_both_samplers_resume_exactly_after_a_round_trip_through_disk(sampling, k):
    straight = make_loader(corpus(), CONTEXT, BATCH, seed=11, sampling=sampling)
    expected = draw(straight, k + 80)  # 80 more batches: across at least one epoch boundary

    interrupted = make_loader(corpus(), CONTEXT, BATCH, seed=11, sampling=sampling)
    assert same_batches(draw(interrupted, k), expected[:k])
    state = through_disk(interrupted.state_dict())
    fresh = make_loader(corpus(), CONTEXT, BATCH, seed=11, sampling=sampling)
    fresh.next_batch()  # a fresh loader that has already moved must still be put back exactly
    fresh.load_state_dict(state)
    assert same_batches(draw(fresh, 80), expected[k:])
    if sampling == "permutation":
        assert set(state) == {"epoch", "index"} and all(type(v) is int for v in state.values())
        assert fresh.state_dict() == straight.state_dict() and fresh.state_dict()["epoch"] > state["epoch"]


def test_loading_the_other_samplers_state_is_a_clear_error():
    random, permutation = (make_loader(corpus(), CONTEXT, BATCH, 0, sampling=s) for s in ("random", "permutation"))
    with pytest.raises(CheckpointError, match="not written by the 'permutation' sampler"):
        permutation.load_state_dict(random.state_dict())
    with pytest.raises(CheckpointError, match="not written by the 'random' sampler"):
        random.load_state_dict(permutation.state_dict())
    with pytest.raises(CheckpointError, match="does not fit this training split"):
        permutation.load_state_dict({"epoch": 0, "index": 10**6})
    assert permutation.state_dict() == {"epoch": 0, "index": 0}  # unchanged by the refused load


def test_random_windows_stay_in_bounds_and_are_shifted():
    loader = make_loader(corpus(), CONTEXT, BATCH, seed=3, sampling="random")
    assert isinstance(loader, RandomWindows)
    all_starts = set()
    for x, y in draw(loader, 500):
        assert x.shape == y.shape == (BATCH, CONTEXT) and x.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert int(x.min()) >= 0 and int(y.max()) <= N - 1
        all_starts.update(starts(x))
    assert min(all_starts) <= 5 and max(all_starts) == N - 1 - CONTEXT  # reaches both ends


def test_make_loader_picks_the_sampler_and_names_the_choices():
    assert isinstance(make_loader(corpus(), CONTEXT, BATCH, 0), RandomWindows)
    assert isinstance(make_loader(corpus(), CONTEXT, BATCH, 0, sampling="permutation"), PermutationWindows)
    with pytest.raises(ValueError, match="unknown sampling 'shuffle'; expected one of random, permutation"):
        make_loader(corpus(), CONTEXT, BATCH, 0, sampling="shuffle")


@pytest.mark.parametrize("sampling", ["random", "permutation"])
def test_a_short_split_is_a_clear_error_naming_the_context(sampling):
    make_loader(corpus(CONTEXT + 1), CONTEXT, BATCH, 0, sampling=sampling).next_batch()  # just long enough
    with pytest.raises(DataError, match=r"16 tokens, fewer than model.context \+ 1 = 17"):
        make_loader(corpus(CONTEXT), CONTEXT, BATCH, 0, sampling=sampling)

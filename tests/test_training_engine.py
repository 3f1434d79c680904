"""The training engine's options: batch plans, schedules, optimizers, periodic checkpoints,
trackers, RNG state and throughput figures (torchrun itself: test_distributed.py)."""

import json
import math
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tinylm.config import ModelConfig, RunConfig, TrainConfig
from tinylm.errors import ConfigError
from tinylm.model import GPT
from tinylm.training import train
from tinylm.training.checkpoint import rng_state, set_rng_state
from tinylm.training.optim import build_optimizers
from tinylm.training.schedule import learning_rate
from tinylm.training.batch import plan_batch

from conftest import tiny_config


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_config(context=128, **train):
    cfg = RunConfig()
    cfg.model.context = context
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def test_batch_tokens_set_the_accumulation_and_keep_the_global_batch_across_process_counts():
    cfg = run_config(batch_tokens=16384, batch_size=16, grad_accum=1)  # 128 sequences of 128 tokens
    one, four = plan_batch(cfg, 1), plan_batch(cfg, 4)
    assert (one.micro, one.accum, one.tokens) == (16, 8, 16384)
    assert (four.micro, four.accum, four.tokens) == (16, 2, 16384)
    legacy = plan_batch(run_config(batch_size=8, grad_accum=3), 2)  # no batch_tokens: batch_size x grad_accum each
    assert (legacy.micro, legacy.accum, legacy.tokens) == (8, 3, 8 * 3 * 2 * 128)
    with pytest.raises(ConfigError, match=r"not divisible by the micro-batch tokens \(batch_size 16 x context 128 "
                                          r"x 3 process\(es\) = 6,144\); set train.batch_size to a divisor of 42"):
        plan_batch(run_config(batch_tokens=16128, batch_size=16), 3)
    with pytest.raises(ConfigError, match="is not a whole number of sequences"):
        plan_batch(cfg, 3)


def test_automatic_micro_batch_takes_the_largest_divisor_that_fits():
    cfg = run_config(batch_tokens=12288, batch_size=0)  # 96 sequences
    tried = []

    def fits(micro):  # stands in for a GPU trial forward/backward
        tried.append(micro)
        return micro <= 20

    plan = plan_batch(cfg, 1, fits)
    assert (plan.micro, plan.accum) == (16, 6) and tried == [96, 48, 32, 24, 16]
    assert plan_batch(cfg, 1).micro == 48  # CPU default: the largest divisor within 8,192 tokens (64 sequences)
    with pytest.raises(ConfigError, match="not even a micro-batch of 1 sequence"):
        plan_batch(cfg, 1, lambda micro: False)
    with pytest.raises(ConfigError, match="batch_size 0 .automatic. needs train.batch_tokens"):
        run_config(batch_size=0).validate()


@pytest.mark.parametrize("schedule,expected", [
    ("cosine", [1e-4, 1e-3, 5.5e-4, 1e-4]),
    ("wsd", [1e-4, 1e-3, 1e-3, 1e-4]),
    ("constant", [1e-4, 1e-3, 1e-3, 1e-3]),
])
def test_schedules(schedule, expected):
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=100, schedule=schedule, cooldown=0.2)
    got = [learning_rate(s, f, cfg) for s, f in [(0, 0.0), (9, 0.09), (50, 0.5), (100, 1.0)]]
    assert got == pytest.approx(expected, rel=0.02)  # step 0 is 1/10 into the warmup
    if schedule == "wsd":  # the cool-down is linear over the last 20%
        assert learning_rate(90, 0.9, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4)
        assert learning_rate(79, 0.79, cfg) == pytest.approx(1e-3)


def test_optimizer_groups():
    model = GPT(ModelConfig(vocab_size=50, context=16, n_layer=2, n_head=2, d_model=32, tie_weights=False))
    cfg = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.03, weight_decay=0.1)
    muon, adamw = build_optimizers(model, cfg, torch.device("cpu"))
    hidden = {id(p) for n, p in model.named_parameters() if n.startswith("blocks.") and n.endswith(".weight")
              and p.ndim == 2}
    assert isinstance(muon, torch.optim.Muon) and {id(p) for g in muon.param_groups for p in g["params"]} == hidden
    in_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    assert not in_adamw & hidden and len(in_adamw | hidden) == len(list(model.parameters()))
    decayed = {id(p) for g in adamw.param_groups if g["weight_decay"] for p in g["params"]}
    assert decayed == {id(model.head.weight)}  # the only matrix AdamW gets; embeddings, norms, biases are not
    assert muon.param_groups[0]["base_lr"] == 0.03 and adamw.param_groups[0]["base_lr"] == 1e-3
    # the reference's update scale sqrt(max(1, rows/cols)), momentum 0.95 and no decay on the hidden matrices
    assert muon.param_groups[0]["adjust_lr_fn"] == "original" and muon.param_groups[0]["weight_decay"] == 0.0
    assert muon.param_groups[0]["momentum"] == 0.95 and muon.param_groups[0]["nesterov"]
    (adam,) = build_optimizers(model, TrainConfig(optimizer="adam", decay_all=True), torch.device("cpu"))
    assert type(adam) is torch.optim.Adam and all(g["weight_decay"] == 0.1 for g in adam.param_groups)


@pytest.mark.parametrize("optimizer", ["muon", "adam"])
def test_other_optimizers_train(tmp_path, corpus_file, optimizer):
    cfg = tiny_config(tmp_path / "run", corpus_file, optimizer=optimizer, max_steps=60, schedule="wsd")
    result = train(cfg)
    losses = [r["train_loss"] for r in metrics(result.run_dir) if "train_loss" in r]
    assert losses[-1] < losses[0] - 0.7
    saved = torch.load(result.run_dir / "train_state.pt", weights_only=True)
    assert len(saved["optimizers"]) == (2 if optimizer == "muon" else 1)


def test_periodic_checkpoints_keep_the_last_k(tmp_path, corpus_file):
    cfg = tiny_config(tmp_path / "run", corpus_file, max_steps=30, eval_interval=20, save_interval=7, keep_last=2)
    run = train(cfg).run_dir
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["step-0000028", "step-0000030"]
    latest = run / "checkpoints" / "step-0000030"
    assert (latest / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    older = torch.load(run / "checkpoints" / "step-0000028" / "train_state.pt", weights_only=True)
    assert older["step"] == 28
    a, b = load_file(run / "checkpoints" / "step-0000028" / "model.safetensors"), load_file(run / "model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # a real older checkpoint, not a link to the newest


def test_rng_state_covers_python_numpy_and_torch_and_loads_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_metrics_rows_carry_throughput_mfu_and_grad_norm(tmp_path, corpus_file):
    cfg = tiny_config(tmp_path / "run", corpus_file, max_steps=20, log_interval=5, eval_interval=20)
    rows = [r for r in metrics(train(cfg).run_dir) if "train_loss" in r]
    for row in rows:
        assert row["tokens_per_s"] > 0 and row["grad_norm"] > 0 and row["tflops"] >= 0
        assert 0 < row["mfu"] < 1  # against this CPU's measured matmul peak (cached in the tinylm cache)


def test_tensorboard_tracker_records_the_run(tmp_path, corpus_file):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tmp_path / "run", corpus_file, max_steps=20, log_interval=5, eval_interval=10,
                      trackers="tensorboard")
    run = train(cfg).run_dir
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10, 15, 20]
    assert [e.step for e in events.Scalars("val/loss")] == [10, 20]
    val = [r["val_loss"] for r in metrics(run) if "val_loss" in r]
    assert [e.value for e in events.Scalars("val/loss")] == pytest.approx(val)


def test_epochs_set_the_number_of_steps(tmp_path, corpus_file):
    from tinylm.data.prepare import prepare, read_meta

    data = prepare(corpus_file, "char", tmp_path / "data")
    n_train = read_meta(data)["splits"]["train"]["tokens"]
    cfg = tiny_config(tmp_path / "run", corpus_file, epochs=0.5, max_steps=10**6, eval_interval=10**6)
    cfg.data.dir = str(data)
    result = train(cfg)
    tokens_per_step = cfg.train.batch_size * cfg.model.context
    assert result.step == math.ceil(0.5 * n_train / tokens_per_step) and result.tokens >= n_train / 2
    assert json.loads((result.run_dir / "config.json").read_text())["train"]["max_steps"] == result.step

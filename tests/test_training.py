import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from tinylm import fileio
from tinylm.config import TrainConfig
from tinylm.errors import CheckpointError, ConfigError, TinylmError
from tinylm.model import GPT
from tinylm.run import read_config
from tinylm.training import checkpoint as ckpt
from tinylm.training import train
from tinylm.training import trainer as trainer_module
from tinylm.training.schedule import learning_rate, progress_fraction


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir, name="model.safetensors"):
    return load_file(run_dir / name)


def test_short_run_learns_and_fills_the_run_directory(tiny_cfg):
    result = train(tiny_cfg)
    run = result.run_dir
    assert result.step == 60 and result.stopped_by == "max_steps"
    for name in ("config.json", "tokenizer.tinylm.json", "model.safetensors", "best.safetensors",
                 "train_state.pt", "metrics.jsonl", "loss.png", "perplexity.png"):
        assert (run / name).is_file(), name
    for plot in ("loss.png", "perplexity.png"):
        assert (run / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = metrics(run)
    train_losses = [r["train_loss"] for r in rows if "train_loss" in r]
    val_losses = [r["val_loss"] for r in rows if "val_loss" in r]
    assert train_losses[-1] < train_losses[0] - 0.5
    assert len(val_losses) == 3 and val_losses[-1] < val_losses[0]
    assert result.best_val_loss == min(val_losses)
    saved = read_config(run)
    assert saved.model.vocab_size > 0 and saved.train.out_dir == str(run)
    assert not list(run.glob(".*.tmp"))  # no temporary files left behind


def test_time_budget_stops_the_run(tmp_path, corpus_file):
    cfg = tiny_config(tmp_path / "run", corpus_file, max_steps=10**9, time_budget=2.0, eval_interval=10**6,
                      log_interval=1)
    result = train(cfg)
    assert result.stopped_by == "time_budget"
    assert 2.0 <= result.elapsed < 6.0
    assert result.val_loss is not None  # the final evaluation still runs
    rows = [r for r in metrics(result.run_dir) if "lr" in r]
    # annealed as the budget ran out: the last step's lr follows the cosine at its time fraction
    # (compared with the next row's elapsed time, so a slow, loaded machine cannot break it)
    last, before = rows[-1], rows[-2]
    assert last["lr"] < max(r["lr"] for r in rows)
    assert last["lr"] <= learning_rate(last["step"], min(before["elapsed"] / 2.0, 1.0), cfg.train) * 1.0001


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=100)
    assert learning_rate(0, 0.0, cfg) == pytest.approx(1e-4)
    assert learning_rate(9, 0.09, cfg) == pytest.approx(1e-3, rel=0.03)
    assert learning_rate(50, 0.5, cfg) == pytest.approx(5.5e-4)
    assert learning_rate(100, 1.0, cfg) == pytest.approx(1e-4)
    timed = TrainConfig(max_steps=1000, time_budget=100)
    assert progress_fraction(10, 50.0, timed) == 0.5  # time runs out first
    assert progress_fraction(900, 1.0, timed) == 0.9
    assert progress_fraction(2000, 0.0, timed) == 1.0


TIMING = ("elapsed", "tokens_per_s", "tflops", "mfu")  # wall-clock figures differ between runs


def crash_at_step(monkeypatch, step: int) -> None:
    """Make the trainer die (Crash) when it is about to train step `step + 1`: a crash between checkpoints."""
    real_step = trainer_module.Trainer.train_step

    def dies(self, lr, *stop):
        if self.step == step:
            raise Crash
        return real_step(self, lr, *stop)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", dies)


class Crash(Exception):
    """Stands in for SIGKILL: the process dies between two checkpoints."""


# muon: two optimizers, gradient accumulation, dropout masks (RNG) and kept checkpoint copies
ENGINES = {"adamw": {}, "muon": {"optimizer": "muon", "batch_tokens": 512, "batch_size": 4, "grad_accum": 1,
                                 "keep_last": 2, "save_interval": 7, "schedule": "wsd"}}


@pytest.mark.parametrize("sampling,engine", [("random", "adamw"), ("permutation", "adamw"), ("random", "muon")])
def test_crash_and_resume_reproduces_the_uninterrupted_run(tmp_path, corpus_file, monkeypatch, sampling, engine):
    source = corpus_file
    if sampling == "permutation":  # short enough that 50 steps run through several epochs
        source = tmp_path / "short.txt"
        source.write_text(corpus_file.read_text()[:5000], encoding="utf-8")
    settings = {"max_steps": 50, "eval_interval": 20, "log_interval": 5, **ENGINES[engine]}

    def config(name: str):
        cfg = tiny_config(tmp_path / name, source, **settings)
        cfg.data.sampling = sampling
        cfg.model.dropout = 0.1 if engine == "muon" else 0.0
        return cfg

    straight = train(config("straight")).run_dir
    crash_at_step(monkeypatch, 33)
    with pytest.raises(Crash):
        train(config("crashed"))
    monkeypatch.undo()
    state = torch.load(tmp_path / "crashed" / "train_state.pt", weights_only=True)
    assert state["step"] == (28 if engine == "muon" else 20)  # the last checkpoint before the crash
    resumed_cfg = read_config(tmp_path / "crashed")
    assert resumed_cfg.data.sampling == sampling
    train(resumed_cfg, resume=True)
    if sampling == "permutation":  # whole epochs before the checkpoint, and another after resuming
        final = torch.load(tmp_path / "crashed" / "train_state.pt", weights_only=True)
        assert 1 <= state["loader"]["epoch"] < final["loader"]["epoch"]

    a, b = weights(straight), weights(tmp_path / "crashed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in metrics(straight)]
    again = [{k: v for k, v in r.items() if k not in TIMING}
             for r in metrics(tmp_path / "crashed")]
    assert strip == again  # the loss curve continues as if never interrupted


def test_a_step_dropped_between_micro_batches_resumes_exactly(tmp_path, corpus_file, monkeypatch):
    """Ctrl-C (or the time budget) in the middle of a step of 3 micro-batches drops that step: the checkpoint
    is the last complete step's (loader and RNG rewound), and resuming gives the uninterrupted run."""
    def config(name: str):
        cfg = tiny_config(tmp_path / name, corpus_file, max_steps=10, eval_interval=4, log_interval=1,
                          batch_size=2, grad_accum=3)
        cfg.model.dropout = 0.1  # dropout masks come from the RNG the dropped step used
        return cfg

    straight = train(config("straight")).run_dir
    asked = []

    def stop_in_step_6(self, stop):
        asked.append(self.step)
        return self.step == 5 and asked.count(5) == 2  # before step 6's third micro-batch

    monkeypatch.setattr(trainer_module.Trainer, "stop_mid_step", stop_in_step_6)
    result = train(config("dropped"))
    monkeypatch.undo()
    assert result.stopped_by == "interrupt" and result.step == 5
    assert torch.load(tmp_path / "dropped" / "train_state.pt", weights_only=True)["step"] == 5
    assert asked[:2] == [0, 0]  # asked between micro-batches: twice a step
    train(read_config(tmp_path / "dropped"), resume=True)
    a, b = weights(straight), weights(tmp_path / "dropped")
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in metrics(straight)]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in metrics(tmp_path / "dropped")]


def test_resume_refuses_finished_runs_and_other_data(trained_run, tmp_path, corpus_file):
    cfg = read_config(trained_run)
    with pytest.raises(CheckpointError, match="already finished"):
        train(cfg, resume=True)
    other = tmp_path / "other.txt"
    other.write_text("completely different text with other letters: XYZ 123 #$%\n" * 200)
    cfg.data.source = str(other)
    cfg.train.max_steps += 10
    with pytest.raises(ConfigError, match=r"^data.source cannot change when resuming \("):  # before any work
        train(cfg, resume=True)


def test_existing_run_directory_is_not_clobbered(trained_run, corpus_file):
    cfg = tiny_config(trained_run, corpus_file)
    with pytest.raises(ConfigError, match="already holds a run; continue it with `tinylm train --resume"):
        train(cfg)


def _checkpoint_inputs(seed):
    torch.manual_seed(seed)
    from tinylm.config import ModelConfig
    model = GPT(ModelConfig(vocab_size=20, context=8, n_layer=1, n_head=2, d_model=8))
    return model, {"step": seed, "payload": torch.arange(seed + 1)}


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_kill_after_the_commit_point_is_completed_on_load(tmp_path, monkeypatch):
    old_model, old_state = _checkpoint_inputs(1)
    ckpt.save_checkpoint(tmp_path, old_model, old_state, {})
    new_model, new_state = _checkpoint_inputs(2)
    real_commit = fileio.commit

    def dies_before_renaming_the_weights(tmp, path):
        if path.name == "model.safetensors":
            raise Crash
        real_commit(tmp, path)

    monkeypatch.setattr(fileio, "commit", dies_before_renaming_the_weights)
    with pytest.raises(Crash):
        ckpt.save_checkpoint(tmp_path, new_model, new_state, {})
    monkeypatch.undo()
    fresh, _ = _checkpoint_inputs(3)
    state = ckpt.load_checkpoint(tmp_path, fresh)
    assert state["step"] == 2
    assert same_weights(fresh, new_model)


def test_kill_before_the_commit_point_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    old_model, old_state = _checkpoint_inputs(1)
    ckpt.save_checkpoint(tmp_path, old_model, old_state, {})
    new_model, new_state = _checkpoint_inputs(2)
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        ckpt.save_checkpoint(tmp_path, new_model, new_state, {})
    monkeypatch.undo()
    fresh, _ = _checkpoint_inputs(3)
    assert ckpt.load_checkpoint(tmp_path, fresh)["step"] == 1
    assert same_weights(fresh, old_model)


@pytest.mark.parametrize("victim", ["model.safetensors", "train_state.pt"])
def test_truncated_checkpoint_files_are_clear_errors(tmp_path, victim):
    model, state = _checkpoint_inputs(1)
    ckpt.save_checkpoint(tmp_path, model, state, {})
    path = tmp_path / victim
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt|does not match"):
        ckpt.load_checkpoint(tmp_path, _checkpoint_inputs(2)[0])


class Exploit:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('owned')",))


def test_a_pickle_bearing_train_state_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "train_state.pt", "wb") as f:
        torch.save({"format": 1, "evil": Exploit()}, f)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        ckpt.read_state(tmp_path)
    assert not (tmp_path / "PWNED").exists()


def test_a_non_finite_loss_stops_the_run_naming_the_step(tiny_cfg, monkeypatch):
    real_forward = GPT.forward

    def nan_after_step_12(self, idx, targets=None):
        logits, loss = real_forward(self, idx, targets)
        if loss is not None and trainer_state["calls"] >= 12:
            loss = loss * math.nan
        trainer_state["calls"] += 1
        return logits, loss

    trainer_state = {"calls": 0}
    monkeypatch.setattr(GPT, "forward", nan_after_step_12)
    with pytest.raises(TinylmError, match="loss became nan at step 13"):
        train(tiny_cfg)


def test_compile_falls_back_to_eager_with_a_warning(tiny_cfg, monkeypatch):
    from tinylm.console import TinylmWarning

    def broken_compile(model, *args, **kwargs):
        raise RuntimeError("no C++ compiler found\nlong details")

    monkeypatch.setattr(torch, "compile", broken_compile)
    tiny_cfg.train.compile = True
    tiny_cfg.train.max_steps = 10
    expected = r"torch.compile is not usable here \(RuntimeError: no C\+\+ compiler found\); training"
    with pytest.warns(TinylmWarning, match=expected):
        result = train(tiny_cfg)
    assert result.step == 10


def test_overwrite_replaces_a_half_deleted_run_but_never_foreign_files(tmp_path, corpus_file):
    half = tmp_path / "half"
    half.mkdir()
    (half / "metrics.jsonl").write_text("")  # what a kill during a previous --overwrite can leave
    (half / ".model.safetensors.tmp").write_bytes(b"x")
    cfg = tiny_config(half, corpus_file, max_steps=5)
    with pytest.raises(ConfigError, match="holds a run that never reached its first checkpoint .* pass --overwrite"):
        train(cfg)
    assert train(cfg, overwrite=True).step == 5
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="not a tinylm run directory \\(it holds 'thesis.tex'\\)"):
        train(tiny_config(foreign, corpus_file), overwrite=True)
    assert (foreign / "thesis.tex").read_text() == "precious"

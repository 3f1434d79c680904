"""`--resume` with changed settings: every train.* key either takes effect exactly as given (in the
optimizer or the loop, and in config.json and the metrics) or is refused in one line before any
work (training/resume.py has the table; docs/input-rules.md shows it)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tinylm.cli import main
from tinylm.config import RunConfig, TrainConfig, load_preset
from tinylm.errors import CheckpointError, ConfigError, TinylmError
from tinylm.run import read_config
from tinylm.training import train
from tinylm.training import data as data_module
from tinylm.training import launch as launch_module
from tinylm.training import trainer as trainer_module
from tinylm.training.resume import DATA_KEYS, REFUSED, RESUMABLE
from tinylm.training.schedule import learning_rate

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.\n" * 60


def tiny(out: Path, source: Path, **train_options) -> RunConfig:
    cfg = load_preset("tiny-test")
    cfg.data.source, cfg.train.out_dir = str(source), str(out)
    cfg.model.context, cfg.model.n_layer, cfg.model.d_model = 16, 1, 16
    options = dict(max_steps=4, eval_interval=2, log_interval=1, eval_tokens=128, dtype="float32")
    options.update(train_options)
    for key, value in options.items():
        setattr(cfg.train, key, value)
    return cfg


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("resume") / "text.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, corpus) -> Path:
    """4 steps of AdamW (lr 3e-3, cosine to 3e-4, 5 warmup steps), checkpointed at steps 2 and 4."""
    return train(tiny(tmp_path_factory.mktemp("base") / "run", corpus)).run_dir


def copy_of(run: Path, tmp: Path) -> Path:
    target = tmp / f"copy-{len(list(tmp.iterdir()))}"
    shutil.copytree(run, target)
    return target


class Resumed:
    """A resumed run with what its trainer actually used."""

    def __init__(self, run: Path, saved: RunConfig, cfg: RunConfig, trainer, threads: int, clips: list[float],
                 eval_windows: list[int], result):
        self.run, self.saved, self.cfg, self.trainer = run, saved, cfg, trainer
        self.threads, self.clips, self.eval_windows, self.result = threads, clips, eval_windows, result


def resume(run: Path, **changes) -> Resumed:
    """Resume `run` with train.* `changes`, recording what the trainer used."""
    saved = read_config(run)
    cfg = read_config(run)
    cfg.train.out_dir = str(run)  # a copied run's config.json names the original directory
    for key, value in changes.items():
        setattr(cfg.train, key, value)
    seen: dict = {"clips": [], "windows": []}
    real_fit, real_clip, real_score = trainer_module.Trainer.fit, torch.nn.utils.clip_grad_norm_, \
        data_module.score_tokens

    def fit(self, resume=False):
        seen["trainer"], seen["threads"] = self, torch.get_num_threads()
        return real_fit(self, resume)

    def clip(parameters, max_norm, *args, **kwargs):
        seen["clips"].append(max_norm)
        return real_clip(parameters, max_norm, *args, **kwargs)

    def score(*args, **kwargs):
        seen["windows"].append(kwargs.get("max_windows"))
        return real_score(*args, **kwargs)

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module.Trainer, "fit", fit)
        mp.setattr(torch.nn.utils, "clip_grad_norm_", clip)
        mp.setattr(trainer_module.Trainer, "_compiled", lambda self: seen.setdefault("compiled", self.ddp))
        mp.setattr(data_module, "score_tokens", score)
        try:
            result = train(cfg, resume=True)
        finally:
            torch.set_num_threads(threads)
    return Resumed(run, saved, cfg, seen["trainer"], seen["threads"], seen["clips"], seen["windows"], result)


# --------------------------------------------------------------------------- the tables


def test_every_train_key_is_decided_once() -> None:
    keys = {f.name for f in dataclasses.fields(TrainConfig)}
    assert keys == set(RESUMABLE) | set(REFUSED) and not set(RESUMABLE) & set(REFUSED)


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_refused_keys_fail_before_any_work(key: str, base_run: Path, monkeypatch) -> None:
    cfg = read_config(base_run)
    value = getattr(cfg.train, key)
    new = {str: "adam", bool: not value}.get(type(value), value + 1 if isinstance(value, int) else value * 2)
    if key == "batch_size":
        new = 4
    setattr(cfg.train, key, new)
    before = {name: (base_run / name).read_bytes() for name in ("train_state.pt", "config.json", "metrics.jsonl")}

    def no_work(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(launch_module, "_train", no_work)
    with pytest.raises(ConfigError, match=rf"^train.{key} cannot change when resuming \(.*\): [^\n]*$"):
        train(cfg, resume=True)
    assert before == {name: (base_run / name).read_bytes() for name in before}


def test_refused_changes_of_model_and_sampling_and_the_cli(base_run: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(launch_module, "_train", lambda *a, **k: pytest.fail("work started"))
    cfg = read_config(base_run)
    cfg.model.dropout = 0.2
    with pytest.raises(ConfigError, match=r"^model.dropout cannot change when resuming \(0.0 -> 0.2\)"):
        train(cfg, resume=True)
    cfg = read_config(base_run)
    cfg.data.sampling = "permutation"
    with pytest.raises(ConfigError, match="data.sampling cannot change when resuming"):
        train(cfg, resume=True)
    assert main(["train", "--resume", str(base_run), "--max-steps", "9", "--set", "train.seed=5"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: train.seed cannot change when resuming (1337 -> 5)") and "\n" not in err


# --------------------------------------------------------------------------- keys that take effect (AdamW)

CHANGES = dict(max_steps=10, lr=2e-3, min_lr=1e-4, schedule="wsd", cooldown=0.5, warmup_steps=8, weight_decay=0.05,
               beta1=0.8, beta2=0.95, eps=1e-6, grad_clip=0.5, eval_interval=3, eval_tokens=64, log_interval=2,
               save_interval=4, keep_last=3, hellaswag_items=1, trackers="tensorboard", threads=1,
               dtype="bfloat16", device="cpu", compile=True)


@pytest.fixture(scope="module")
def adamw(base_run: Path, tmp_path_factory, corpus) -> Resumed:
    hellaswag = tmp_path_factory.mktemp("hellaswag") / "h.jsonl"
    hellaswag.write_text(json.dumps({"ctx": "To be", "endings": ["or not", "the", "mind", "is"], "label": 0}) + "\n")
    return resume(copy_of(base_run, tmp_path_factory.mktemp("adamw")), hellaswag_file=str(hellaswag), **CHANGES)


def expected_lrs(cfg: TrainConfig, steps: list[int]) -> list[float]:
    """The schedule's learning rate for the rows logged after steps `steps` (rows carry the lr of the
    step they ended)."""
    return [learning_rate(s - 1, (s - 1) / cfg.max_steps, cfg) for s in steps]


def resumed_rows(r: Resumed) -> list[dict]:
    return [row for row in rows(r.run) if row["step"] > 4]


SCHEDULE_KEYS = ["lr", "min_lr", "schedule", "cooldown", "warmup_steps", "max_steps"]


@pytest.mark.parametrize("key", SCHEDULE_KEYS)
def test_schedule_keys_take_effect(key: str, adamw: Resumed) -> None:
    train_rows = [row for row in resumed_rows(adamw) if "lr" in row]
    steps = [row["step"] for row in train_rows]
    logged = [row["lr"] for row in train_rows]
    assert logged == pytest.approx(expected_lrs(adamw.cfg.train, steps), rel=1e-12)
    old = dataclasses.replace(adamw.cfg.train, **{key: getattr(adamw.saved.train, key)})
    assert logged != pytest.approx(expected_lrs(old, steps), rel=1e-9), f"{key}'s change is not visible"
    # and the optimizer used exactly the logged rate, from the new base rate
    for group in adamw.trainer.optimizers[0].param_groups:
        assert group["base_lr"] == adamw.cfg.train.lr and group["lr"] == pytest.approx(logged[-1], rel=1e-12)
    if key == "max_steps":
        assert adamw.result.step == 10 and steps[-1] == 10


@pytest.mark.parametrize("key", ["beta1", "beta2", "eps", "weight_decay"])
def test_adam_hyperparameters_take_effect(key: str, adamw: Resumed) -> None:
    groups = adamw.trainer.optimizers[0].param_groups
    t = adamw.cfg.train
    value = {"beta1": lambda g: g["betas"][0], "beta2": lambda g: g["betas"][1], "eps": lambda g: g["eps"],
             "weight_decay": lambda g: g["weight_decay"]}[key]
    decayed = [g for g in groups if g["weight_decay"]]
    for group in decayed if key == "weight_decay" else groups:
        assert value(group) == getattr(t, key) != getattr(adamw.saved.train, key)
    saved = torch.load(adamw.run / "train_state.pt", weights_only=True)["optimizers"][0]["param_groups"]
    assert [value(g) for g in saved] == [value(g) for g in groups]  # and checkpointed so


def test_grad_clip_takes_effect(adamw: Resumed) -> None:
    assert adamw.clips and set(adamw.clips) == {0.5}


def test_loop_intervals_take_effect(adamw: Resumed) -> None:
    resumed = resumed_rows(adamw)
    assert [r["step"] for r in resumed if "train_loss" in r] == [6, 8, 10]  # log_interval 2
    assert [r["step"] for r in resumed if "val_loss" in r] == [6, 9, 10]  # eval_interval 3, and the end
    assert all("hellaswag_acc" in r for r in resumed if "val_loss" in r)  # hellaswag_items, hellaswag_file
    # save_interval 4 adds a checkpoint at step 8; keep_last 3 keeps the last three copies
    assert sorted(p.name for p in (adamw.run / "checkpoints").iterdir()) == ["step-0000008", "step-0000009",
                                                                             "step-0000010"]


def test_eval_tokens_take_effect(adamw: Resumed) -> None:
    assert adamw.eval_windows[:2] == [64 // 16] * 2  # periodic passes score eval_tokens / seq_len windows


def test_runtime_keys_take_effect(adamw: Resumed) -> None:
    assert adamw.threads == 1
    assert adamw.trainer.dtype == torch.bfloat16 and adamw.trainer.device.type == "cpu"
    assert adamw.trainer.forward is adamw.trainer.ddp  # compile=True went through Trainer._compiled
    assert list((adamw.run / "tensorboard").rglob("events.out.tfevents.*"))


def test_config_json_and_metrics_record_the_new_settings(adamw: Resumed) -> None:
    saved = read_config(adamw.run).train
    for key, value in CHANGES.items():
        assert getattr(saved, key) == value, key
    assert saved.hellaswag_file == adamw.cfg.train.hellaswag_file


# --------------------------------------------------------------------------- Muon, epochs, time budget


def test_muon_keys_take_effect(corpus, tmp_path) -> None:
    run = train(tiny(tmp_path / "muon", corpus, optimizer="muon")).run_dir
    r = resume(run, max_steps=6, muon_lr=0.01, muon_momentum=0.8)
    muon = r.trainer.optimizers[0]
    assert type(muon).__name__ == "Muon"
    for group in muon.param_groups:
        assert group["base_lr"] == 0.01 and group["momentum"] == 0.8
        assert group["lr"] == pytest.approx(0.01 * rows(run)[-2]["lr"] / r.cfg.train.lr, rel=1e-12)
    saved = torch.load(run / "train_state.pt", weights_only=True)["optimizers"][0]["param_groups"]
    assert [(g["base_lr"], g["momentum"]) for g in saved] == [(0.01, 0.8)] * len(saved)


def test_epochs_and_save_minutes_take_effect(base_run, tmp_path) -> None:
    from tinylm.data.prepare import load_split, resolve_data_dir

    r = resume(copy_of(base_run, tmp_path), epochs=0.2, save_minutes=1e-9, keep_last=100)
    tokens = len(load_split(resolve_data_dir(r.cfg.data)[0], "train"))
    steps = r.cfg.train.max_steps
    assert steps == math.ceil(0.2 * tokens / r.trainer.tokens_per_step) == read_config(r.run).train.max_steps
    assert r.result.step == steps > 4
    # save_minutes ~0: a checkpoint after every step
    assert sorted(int(p.name[5:]) for p in (r.run / "checkpoints").iterdir()) == list(range(5, steps + 1))


def test_max_steps_given_to_a_run_sized_in_epochs_drops_the_epochs(corpus, tmp_path) -> None:
    run = train(tiny(tmp_path / "epochs", corpus, epochs=0.05)).run_dir
    sized = read_config(run).train
    r = resume(run, max_steps=sized.max_steps + 2)
    assert r.result.step == sized.max_steps + 2 and read_config(run).train.epochs == 0.0


def test_time_budget_takes_effect(base_run, tmp_path) -> None:
    from tinylm.training.checkpoint import read_state

    run = copy_of(base_run, tmp_path)
    elapsed = read_state(run)["elapsed"]
    r = resume(run, max_steps=10**9, time_budget=elapsed + 1.5)
    assert r.result.stopped_by == "time_budget" and 4 < r.result.step < 10**9


def test_the_issues_example_on_the_command_line(base_run, tmp_path) -> None:
    """`tinylm train --resume RUN --max-steps N --set train.lr=1e-2`: the optimizer, config.json and
    metrics.jsonl all say 1e-2."""
    run = copy_of(base_run, tmp_path)
    assert main(["train", "--resume", str(run), "--max-steps", "6", "--set", "train.lr=1e-2"]) == 0
    assert read_config(run).train.lr == 1e-2
    state = torch.load(run / "train_state.pt", weights_only=True)
    last = [r for r in rows(run) if "lr" in r][-1]
    for group in state["optimizers"][0]["param_groups"]:
        assert group["base_lr"] == 1e-2 and group["lr"] == pytest.approx(last["lr"], rel=1e-12)
    assert last["lr"] == pytest.approx(learning_rate(5, 5 / 6, read_config(run).train), rel=1e-12)


def test_diverging_after_a_checkpoint_advises_a_resume_that_works(base_run, tmp_path, monkeypatch, capsys) -> None:
    run = copy_of(base_run, tmp_path)
    real_backward = trainer_module.Trainer.backward

    def diverges(self):
        loss = real_backward(self)
        return loss * math.nan if self.step == 5 else loss

    monkeypatch.setattr(trainer_module.Trainer, "backward", diverges)
    assert main(["train", "--resume", str(run), "--max-steps", "8"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "nothing was saved after step 4" in err
    advice = err[err.index("tinylm train --resume"):].split(" (")[0].split()
    monkeypatch.undo()
    assert main([*advice[1:], "--max-steps", "8"]) == 0  # the advised command, as printed
    assert read_config(run).train.lr == float(advice[advice.index("--lr") + 1])


def test_failing_before_the_first_checkpoint_leaves_no_directory(corpus, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "fresh"
    argv = ["train", "--preset", "tiny-test", "--text", str(corpus), "--out", str(out), "--max-steps", "4",
            "--set", "model.context=16", "--set", "model.n_layer=1", "--set", "model.d_model=16"]
    real_backward = trainer_module.Trainer.backward
    monkeypatch.setattr(trainer_module.Trainer, "backward",
                        lambda self: real_backward(self) * (math.nan if self.step == 1 else 1.0))
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the training loss became nan at step 2" in err and "nothing was kept" in err and "--lr" in err
    assert not out.exists()
    monkeypatch.undo()
    lower = err[err.index("--lr"):].split(")")[0].split()
    assert main([*argv, *lower]) == 0  # "run the same command again with a lower learning rate"
    # a directory left by a killed run (no checkpoint): the advice is --overwrite, which works
    (out / "train_state.pt").unlink()
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "never reached its first checkpoint" in err and "--overwrite" in err and "--resume" not in err
    assert main(["train", "--resume", str(out)]) == 1
    assert f"--out {out} --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_resume_of_a_finished_run_says_what_to_raise(base_run, capsys) -> None:
    assert main(["train", "--resume", str(base_run)]) == 1
    assert "already finished (step 4" in capsys.readouterr().err
    with pytest.raises(TinylmError):
        train(read_config(base_run), resume=True)


# --------------------------------------------------------------------------- what stays frozen through other routes
# (issue 27, item 3: a refused setting must not get in through the process count, the Python API's data
# settings, or data changed under the run; two processes themselves: test_distributed.py)


TINY = load_preset("tiny-test")


@settings(max_examples=150, deadline=None)
@given(batch_size=st.integers(0, 12), grad_accum=st.integers(1, 4), tokens_per_seq=st.sampled_from([0, 1, 3, 8]),
       seq_len=st.sampled_from([8, 16, 32]), saved=st.integers(1, 6), now=st.integers(1, 8))
def test_another_process_count_keeps_the_tokens_of_a_step(batch_size, grad_accum, tokens_per_seq, seq_len, saved,
                                                          now) -> None:
    """Whatever the saved batch settings and the two process counts: the resumed plan takes a step of the
    saved tokens, in micro-batches no larger than the saved one, or the resume is a one-line error that
    names process counts that work."""
    from tinylm.training.resume import keep_batch
    from tinylm.training.batch import plan_batch

    cfg = copy.deepcopy(TINY)
    cfg.model.context = seq_len
    t = cfg.train
    t.batch_size, t.grad_accum = batch_size, grad_accum
    t.batch_tokens = tokens_per_seq * seq_len * saved * max(batch_size, 1)
    if t.batch_tokens:
        t.grad_accum = 1
    if not t.batch_tokens and not batch_size:
        t.batch_size = 1
    try:
        tokens = plan_batch(cfg, saved).tokens  # the saved run's plan (its settings were valid for it)
    except ConfigError:
        return
    sequences = tokens // seq_len
    resumed = copy.deepcopy(cfg)
    try:
        note = keep_batch(cfg, saved, resumed, now)
    except ConfigError as e:
        works = [int(n) for n in str(e).split("resume it on ")[1].split(" process")[0].split(", ")]
        assert "\n" not in str(e) and sequences % now and all(sequences % n == 0 for n in works)
        return
    if now == saved:
        assert note is None and resumed == cfg
        return
    plan = plan_batch(resumed, now)
    assert plan.tokens == tokens and f"stays {tokens:,} tokens" in note
    assert plan.micro <= cfg.train.batch_size or not cfg.train.batch_size  # never a larger micro-batch
    back = copy.deepcopy(resumed)
    keep_batch(resumed, now, back, saved)  # and back again on the saved process count
    assert plan_batch(back, saved).tokens == tokens


@pytest.mark.parametrize("key", sorted(DATA_KEYS))
def test_the_data_cannot_change_on_resume_through_python_either(key: str, base_run: Path, monkeypatch) -> None:
    cfg = read_config(base_run)
    value = getattr(cfg.data, key)
    new = {bool: not value, int: value + 1 if isinstance(value, int) else value, float: 0.25}.get(type(value))
    if isinstance(value, str):
        new = {"split": "shuffle", "errors": "replace", "sampling": "permutation", "tokenizer": "gpt2"}.get(key, value + "x")
    setattr(cfg.data, key, new)
    monkeypatch.setattr(launch_module, "_train", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ConfigError, match=rf"^data.{key} cannot change when resuming \(.*\): [^\n]*$"):
        train(cfg, resume=True)


def test_data_changed_under_a_run_is_refused_before_a_step(tmp_path) -> None:
    """The source file grows by text of the same characters: the char tokenizer (so its fingerprint) is
    the same, but the training tokens are not those the loader's position counts."""
    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT)
    run = train(tiny(tmp_path / "run", corpus)).run_dir
    before = (run / "train_state.pt").read_bytes()
    corpus.write_text(TEXT + TEXT[:700])
    cfg = read_config(run)
    cfg.train.max_steps = 6
    with pytest.raises(CheckpointError, match=r"is not the data of its checkpoint \(its source changed: [\d,]+ "
                                              r"training tokens then, [\d,]+ now"):
        train(cfg, resume=True)
    assert (run / "train_state.pt").read_bytes() == before
    corpus.write_text(TEXT)  # the run's own text again: it resumes
    assert train(cfg, resume=True).step == 6


def test_a_trainer_built_with_other_batch_settings_cannot_restore(base_run: Path, tmp_path) -> None:
    from tinylm.data.prepare import resolve_data_dir
    from tinylm.tokenizers import load_tokenizer

    run = copy_of(base_run, tmp_path)
    cfg = read_config(run)
    cfg.train.batch_size *= 2
    model, weights = launch_module.build_model(cfg)
    data = data_module.WindowData(resolve_data_dir(cfg.data)[0])
    trainer = trainer_module.Trainer(cfg, run, model, data, load_tokenizer(run), weights)
    with pytest.raises(CheckpointError, match=r"takes steps of \d+ tokens in windows of 16, this resume \d+"):
        trainer.restore()


@pytest.mark.slow
def test_one_process_trains_in_a_run_directory_at_a_time(corpus, tmp_path, capsys) -> None:
    """Issue 27, item 2: a second `tinylm train --resume RUN` (or --overwrite) while RUN trains is a one-line
    error, and the running one keeps its files; Ctrl-C leaves a checkpoint, which then resumes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    argv = ["train", "--preset", "tiny-test", "--text", str(corpus), "--out", str(run), "--device", "cpu",
            "--max-steps", str(10**9), "--set", "train.save_interval=5", "--set", "model.context=16"]
    busy = subprocess.Popen([sys.executable, "-m", "tinylm", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (run / "train_state.pt").is_file():
            assert busy.poll() is None and time.monotonic() < deadline, busy.communicate()
            time.sleep(0.2)
        capsys.readouterr()
        for attempt in (["train", "--resume", str(run), "--max-steps", str(10**9 + 1)], [*argv, "--overwrite"]):
            assert main(attempt) == 1
            err = capsys.readouterr().err.strip()
            assert err == (f"error: {run} is in use: another tinylm process is training in it; wait for that process "
                           "to finish (Ctrl-C stops it with a checkpoint), then try again, or choose another --out")
        assert (run / "config.json").is_file() and busy.poll() is None  # the running one is untouched
    finally:
        busy.send_signal(signal.SIGINT)
        _, err = busy.communicate(timeout=120)
    assert busy.returncode == 130, err[-2000:]
    step = torch.load(run / "train_state.pt", weights_only=True)["step"]
    assert main(["train", "--resume", str(run), "--max-steps", str(step + 2)]) == 0

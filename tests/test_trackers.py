"""Optional experiment trackers: TensorBoard for real (when installed), W&B through a fake module."""

from __future__ import annotations

import json
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import pytest

from tinylm.console import TinylmWarning
from tinylm.errors import ConfigError
from tinylm.training.trackers import WANDB_ID_FILE, open_trackers, scalars, tag_for

CONFIG = {"model": {"n_layer": 2, "d_model": 64}, "train": {"lr": 0.001, "trackers": "tensorboard"}}
TRAIN_ROWS = [
    {"step": 10, "tokens": 20480, "elapsed": 3.2, "lr": 0.001, "train_loss": 3.1, "grad_norm": 0.9,
     "tokens_per_s": 6400.0, "tflops": 0.01, "mfu": 0.02},
    {"step": 20, "tokens": 40960, "elapsed": 6.4, "lr": 0.0009, "train_loss": 2.9, "grad_norm": None,
     "tokens_per_s": 6500.0, "tflops": 0.011},
]
VAL_ROW = {"step": 20, "tokens": 40960, "elapsed": 7.0, "val_loss": 2.0, "val_perplexity": 7.4,
           "hellaswag_acc": 0.25}


# --- tag mapping -------------------------------------------------------------------------------

def test_tag_mapping_and_skipped_values() -> None:
    row = {"step": 5, "train_loss": 3.0, "val_loss": 2.5, "val_perplexity": 12.0, "lr": 1e-3, "grad_norm": None,
           "tokens_per_s": 100, "tflops": 0.5, "mfu": 0.1, "hellaswag_acc": 0.3, "tokens": 512, "elapsed": 1.5,
           "preset": "tiny", "finished": True, "val_bpb": 1.1, "train_ppl": 20.0, "weird": 7}
    assert scalars(row) == {
        "train/loss": 3.0, "val/loss": 2.5, "val/perplexity": 12.0, "train/lr": 1e-3, "perf/tokens_per_s": 100.0,
        "perf/tflops": 0.5, "perf/mfu": 0.1, "eval/hellaswag_acc": 0.3, "progress/tokens": 512.0,
        "progress/elapsed_s": 1.5, "val/bpb": 1.1, "train/ppl": 20.0, "other/weird": 7.0,
    }
    assert tag_for("train_") == "other/train_"


# --- TensorBoard, for real -----------------------------------------------------------------------

def _read_events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _series(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_writes_grouped_scalars_and_config(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    trackers = open_trackers("tensorboard", tmp_path, CONFIG, "run-a", resume=False)
    assert len(trackers) == 1
    for row in [*TRAIN_ROWS, VAL_ROW]:
        trackers[0].log(row)
    trackers[0].close()

    acc = _read_events(tmp_path / "tensorboard")
    assert set(acc.Tags()["scalars"]) == {
        "train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s", "perf/tflops", "perf/mfu",
        "progress/tokens", "progress/elapsed_s", "val/loss", "val/perplexity", "eval/hellaswag_acc"}
    assert _series(acc, "train/loss") == [(10, pytest.approx(3.1)), (20, pytest.approx(2.9))]
    assert _series(acc, "train/grad_norm") == [(10, pytest.approx(0.9))]  # None at step 20 skipped
    assert _series(acc, "perf/mfu") == [(10, pytest.approx(0.02))]
    assert _series(acc, "val/loss") == [(20, pytest.approx(2.0))]
    assert _series(acc, "val/perplexity") == [(20, pytest.approx(7.4))]
    assert _series(acc, "eval/hellaswag_acc") == [(20, pytest.approx(0.25))]

    assert "config/text_summary" in acc.Tags()["tensors"]
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text.removeprefix("```json\n").removesuffix("\n```")) == CONFIG


def test_tensorboard_resume_skips_config_and_purges_orphaned_steps(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    (first,) = open_trackers("tensorboard", tmp_path, CONFIG, "run-a", resume=False)
    for step, loss in ((10, 3.0), (20, 2.8), (30, 2.6)):  # crash after step 30, checkpoint at 20
        first.log({"step": step, "train_loss": loss})
    first.close()

    (second,) = open_trackers("tensorboard", tmp_path, CONFIG, "run-a", resume=True, start_step=20)
    second.log({"step": 30, "train_loss": 2.5})
    second.close()

    acc = _read_events(tmp_path / "tensorboard")
    assert _series(acc, "train/loss") == [(10, pytest.approx(3.0)), (20, pytest.approx(2.8)),
                                          (30, pytest.approx(2.5))]
    assert len(acc.Tensors("config/text_summary")) == 1  # written by the first run only


# --- Weights & Biases, through a fake module ---------------------------------------------------------

class FakeRun:
    def __init__(self, fail_log: bool = False):
        self.logged: list[tuple[dict[str, float], int]] = []
        self.log_calls = 0
        self.finished = 0
        self.fail_log = fail_log

    def log(self, data: dict[str, float], step: int) -> None:
        self.log_calls += 1
        if self.fail_log:
            raise ConnectionError("wandb backend went away\nsecond line")
        self.logged.append((dict(data), step))

    def finish(self) -> None:
        self.finished += 1


@pytest.fixture
def fake_wandb(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    state = types.SimpleNamespace(inits=[], runs=[], fail_log=False, fail_init=False)
    module = types.ModuleType("wandb")

    def init(**kwargs: Any) -> FakeRun:
        if state.fail_init:
            raise RuntimeError("api_key not configured (no-tty)")
        state.inits.append(kwargs)
        state.runs.append(FakeRun(fail_log=state.fail_log))
        return state.runs[-1]

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    return state


def test_wandb_init_log_finish(tmp_path: Path, fake_wandb: types.SimpleNamespace) -> None:
    (tracker,) = open_trackers("wandb", tmp_path, CONFIG, "tiny-run", resume=False)
    (init,) = fake_wandb.inits
    run_id = (tmp_path / WANDB_ID_FILE).read_text().strip()
    assert run_id and init["id"] == run_id
    assert init["config"] == CONFIG and init["name"] == "tiny-run" and init["dir"] == str(tmp_path)
    assert init["project"] == "tinylm" and init["resume"] == "allow"

    for row in [*TRAIN_ROWS, VAL_ROW]:
        tracker.log(row)
    run = fake_wandb.runs[0]
    assert [step for _, step in run.logged] == [10, 20, 20]
    assert run.logged[0][0] == {
        "train/loss": 3.1, "train/lr": 0.001, "train/grad_norm": 0.9, "perf/tokens_per_s": 6400.0,
        "perf/tflops": 0.01, "perf/mfu": 0.02, "progress/tokens": 20480.0, "progress/elapsed_s": 3.2}
    assert "train/grad_norm" not in run.logged[1][0]
    assert run.logged[2][0] == {"val/loss": 2.0, "val/perplexity": 7.4, "eval/hellaswag_acc": 0.25,
                                "progress/tokens": 40960.0, "progress/elapsed_s": 7.0}
    assert run.finished == 0
    tracker.close()
    tracker.close()  # idempotent
    assert run.finished == 1


def test_wandb_resume_reuses_the_run_id(tmp_path: Path, fake_wandb: types.SimpleNamespace,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_PROJECT", "my-project")
    open_trackers("wandb", tmp_path, CONFIG, "r", resume=False)[0].close()
    open_trackers("wandb", tmp_path, CONFIG, "r", resume=True)[0].close()
    open_trackers("wandb", tmp_path, CONFIG, "r", resume=False)[0].close()  # a fresh run: a new W&B run
    first, resumed, fresh = (init["id"] for init in fake_wandb.inits)
    assert resumed == first and fresh != first
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() == fresh
    assert {init["project"] for init in fake_wandb.inits} == {"my-project"}


def test_wandb_init_failure_is_a_config_error(tmp_path: Path, fake_wandb: types.SimpleNamespace) -> None:
    fake_wandb.fail_init = True
    with pytest.raises(ConfigError, match=r"wandb\.init failed \(RuntimeError: api_key not configured"):
        open_trackers("wandb", tmp_path, CONFIG, "r", resume=False)


# --- configuration errors ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["wandb", "tensorboard"])
def test_missing_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setitem(sys.modules, name, None)  # makes `import name` fail
    with pytest.raises(ConfigError) as info:
        open_trackers(f"tensorboard,{name}" if name == "wandb" else name, tmp_path / "run", CONFIG, "r", False)
    message = str(info.value)
    assert f"the {name} package is not installed" in message
    assert f"pip install 'tinylm[{name}]'" in message and "\n" not in message
    assert not (tmp_path / "run").exists()  # checked before anything is opened


def test_unknown_and_empty_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown tracker 'mlflow'; known: tensorboard, wandb"):
        open_trackers("tensorboard,mlflow", tmp_path, CONFIG, "r", False)
    assert open_trackers("", tmp_path, CONFIG, "r", False) == []
    assert open_trackers(" , ", tmp_path, CONFIG, "r", False) == []
    assert list(tmp_path.iterdir()) == []


def test_names_are_trimmed_case_insensitive_and_deduplicated(tmp_path: Path,
                                                             fake_wandb: types.SimpleNamespace) -> None:
    trackers = open_trackers(" WandB , wandb,", tmp_path, CONFIG, "r", False)
    assert len(trackers) == 1 and len(fake_wandb.inits) == 1
    trackers[0].close()


# --- a failing tracker never stops training --------------------------------------------------------

def test_failing_tracker_warns_once_and_is_disabled(tmp_path: Path, fake_wandb: types.SimpleNamespace) -> None:
    fake_wandb.fail_log = True
    (tracker,) = open_trackers("wandb", tmp_path, CONFIG, "r", resume=False)
    run = fake_wandb.runs[0]
    with pytest.warns(TinylmWarning) as record:
        for row in [*TRAIN_ROWS, VAL_ROW]:
            tracker.log(row)  # must not raise
    assert len(record) == 1
    message = str(record[0].message)
    assert "wandb tracker failed at step 10" in message and "ConnectionError: wandb backend went away" in message
    assert "\n" not in message
    assert run.log_calls == 1  # later rows were not attempted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tracker.close()  # still finishes the run, and says nothing more
    assert run.finished == 1


def test_failing_tensorboard_writer_is_disabled_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    (tracker,) = open_trackers("tensorboard", tmp_path, CONFIG, "r", resume=False)
    calls = []

    def broken(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        raise OSError("No space left on device")

    monkeypatch.setattr(tracker.tracker.writer, "add_scalar", broken)
    with pytest.warns(TinylmWarning, match="tensorboard tracker failed at step 10 .*No space left"):
        tracker.log(TRAIN_ROWS[0])
        tracker.log(TRAIN_ROWS[1])
    assert len(calls) == 1
    tracker.close()


def test_failing_close_warns_instead_of_raising(tmp_path: Path, fake_wandb: types.SimpleNamespace,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tracker,) = open_trackers("wandb", tmp_path, CONFIG, "r", resume=False)

    def broken_finish() -> None:
        raise RuntimeError("upload timed out")

    monkeypatch.setattr(fake_wandb.runs[0], "finish", broken_finish)
    with pytest.warns(TinylmWarning, match="wandb tracker failed while closing .*RuntimeError: upload timed out"):
        tracker.close()


def test_module_imports_without_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import tinylm.training.trackers as trackers

    for name in ("tensorboard", "wandb", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)  # any top-level import of them would now fail
    spec = importlib.util.spec_from_file_location("_tinylm_trackers_copy", trackers.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.open_trackers("", Path("unused"), {}, "r", False) == []

"""Shared fixtures: an isolated cache, a small real-text corpus, and one trained tiny run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tinylm.config import RunConfig, load_preset
from tinylm.data.spec import read_source

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TINYLM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep prepared data out of ~/.cache during tests."""
    os.environ["TINYLM_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $TINYLM_SHARED_DATA): real corpora for slow tests."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}; set TINYLM_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("this test must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="session")
def corpus_text() -> str:
    """About 60k characters of real Shakespeare from the bundled corpus (Hamlet's opening)."""
    docs = read_source("shakespeare").documents()
    hamlet = next(d for d in docs if d.startswith("HAMLET"))
    return hamlet[:60_000]


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory, corpus_text: str) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "hamlet.txt"
    path.write_text(corpus_text, encoding="utf-8")
    return path


def tiny_config(out_dir: Path, source: Path, **train: object) -> RunConfig:
    """The tiny-test preset on `source`, writing to `out_dir`, with train.* overrides."""
    cfg = load_preset("tiny-test")
    cfg.data.source = str(source)
    cfg.train.out_dir = str(out_dir)
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> Path:
    """A tiny model trained for a few seconds; shared read-only by sampling and eval tests."""
    from tinylm.training import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = tiny_config(out, corpus_file, max_steps=150, eval_interval=50)
    train(cfg)
    return out


@pytest.fixture
def tiny_cfg(tmp_path: Path, corpus_file: Path) -> RunConfig:
    return tiny_config(tmp_path / "run", corpus_file)


@pytest.fixture
def torch_one_thread():
    """One torch thread for the test: many small ops (serving's decode steps) are far faster on a
    loaded machine without OpenMP threads waiting for each other; restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- system components

CHROMIUM = Path(os.environ.get("TINYLM_CHROMIUM", "/usr/bin/chromium"))


def _chromium() -> str | None:
    """Why the headless browser tests cannot run, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install playwright)"
    if not CHROMIUM.is_file():
        return f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium, or set TINYLM_CHROMIUM)"
    return None


def _llama_cpp() -> str | None:
    """Why llama.cpp (llama-cpp-python) cannot run, or None when it can."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        return f"llama-cpp-python is not installed ({e}); pip install llama-cpp-python (compiles llama.cpp)"
    return None


COMPONENTS = {"chromium": _chromium, "llama_cpp": _llama_cpp}


def require(component: str) -> None:
    """Skip the calling test when a system component is missing, but fail it when TINYLM_CI=1
    (CI installs every component, so a skip there would hide a broken environment)."""
    missing = COMPONENTS[component]()
    if missing is None:
        return
    if os.environ.get("TINYLM_CI") == "1":
        pytest.fail(f"{component} is required in CI (TINYLM_CI=1): {missing}")
    pytest.skip(f"{component} unavailable: {missing}")

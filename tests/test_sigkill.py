"""SIGKILL a real training process at random moments; resuming must reproduce the uninterrupted run."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

ARGS = ["--preset", "tiny-test", "--max-steps", "240", "--set", "train.eval_interval=15",
        "--set", "train.log_interval=5", "--set", "model.dropout=0.1", "--seed", "11"]


def command(*args):
    return [sys.executable, "-m", "tinylm", "train", *args]


def steps_logged(run_dir):
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def kill_somewhere(cmd, run_dir, rng):
    """Start training, let it run past a random point, SIGKILL it. Returns True if it finished first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = steps_logged(run_dir) + rng.randint(3, 12)
    deadline = time.time() + 120
    while proc.poll() is None and steps_logged(run_dir) < target and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(rng.random() * 0.3)  # land anywhere, including inside a checkpoint write
    if proc.poll() is not None:
        return True
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return False


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, corpus_file):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(command(*ARGS, "--text", str(corpus_file), "--out", str(straight)), check=True,
                   capture_output=True)
    rng = random.Random(1234)
    finished = kill_somewhere(command(*ARGS, "--text", str(corpus_file), "--out", str(killed)), killed, rng)
    kills = 0
    while not finished:
        kills += 1
        if not (killed / "train_state.pt").is_file():  # killed before the first checkpoint: start over
            finished = kill_somewhere(command(*ARGS, "--text", str(corpus_file), "--out", str(killed),
                                              "--overwrite"), killed, rng)
            continue
        finished = kill_somewhere(command("--resume", str(killed)), killed, rng)
    assert kills >= 2, "the run should have been killed more than once"

    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [[(r["step"], r.get("train_loss"), r.get("val_loss")) for r in map(json.loads, (d / "metrics.jsonl")
              .read_text().splitlines())] for d in (straight, killed)]
    assert losses[0] == losses[1]
    assert not list(killed.glob(".*.tmp"))

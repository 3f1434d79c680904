"""SIGKILL a real training process at random moments; resuming must reproduce the uninterrupted run.

Within one process, resuming is bit-exact (tests/test_training.py asserts torch.equal). Across
separate processes, PyTorch's CPU kernels (MKL) on this project's machines occasionally give a
result one float32 ulp apart (about one process in ten over 225 steps, never within a process),
so this test compares with tolerances that such noise cannot reach but a resume bug always does.
Measured with tiny-test, 240 steps: a 1-ulp weight perturbation moved any logged loss by at most
5e-7 and any weight by at most 2.4e-4; feeding one wrong batch, even at step 230 of 240, moved
logged losses by 0.2 or more. The test runs 150 steps (fewer steps accumulate less of that noise).
"""

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

ARGS = ["--preset", "tiny-test", "--max-steps", "150", "--set", "train.eval_interval=15",
        "--set", "train.log_interval=5", "--set", "model.dropout=0.1", "--seed", "11"]


def command(*args):
    return [sys.executable, "-m", "tinylm", "train", *args]


def steps_logged(run_dir):
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def kill_somewhere(cmd, run_dir, rng, events):
    """Start training, let it run past a random point, SIGKILL it. Returns True if it ended by itself."""
    log = run_dir.parent / "stderr.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        target = steps_logged(run_dir) + rng.randint(3, 12)
        deadline = time.time() + 120
        while proc.poll() is None and steps_logged(run_dir) < target and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.random() * 0.3)  # land anywhere, including inside a checkpoint write
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            events.append(f"killed {cmd[4:6]} at {steps_logged(run_dir)} metrics rows")
            return False
    message = log.read_text().strip().splitlines()[-1:]
    events.append(f"{cmd[4:6]} exited {proc.returncode}: {message}")
    # a run killed after its last checkpoint is resumed once more and reports that it is finished
    assert proc.returncode == 0 or "already finished" in log.read_text(), events
    return True


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, corpus_file):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(command(*ARGS, "--text", str(corpus_file), "--out", str(straight)), check=True,
                   capture_output=True)
    rng = random.Random(1234)
    events: list[str] = []
    start = command(*ARGS, "--text", str(corpus_file), "--out", str(killed), "--overwrite")
    finished = kill_somewhere(start, killed, rng, events)
    while not finished:
        # killed before the first checkpoint: start over (--overwrite), else resume
        cmd = command("--resume", str(killed)) if (killed / "train_state.pt").is_file() else start
        finished = kill_somewhere(cmd, killed, rng, events)
    assert sum(e.startswith("killed") for e in events) >= 2, events

    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-3) for k in a), events
    rows = [[(r["step"], "val_loss" in r, r.get("train_loss") or r.get("val_loss"))
             for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())] for d in (straight, killed)]
    assert [r[:2] for r in rows[0]] == [r[:2] for r in rows[1]], events  # the same rows, none lost or repeated
    worst = max(abs(x[2] - y[2]) for x, y in zip(*rows, strict=True))
    assert worst < 1e-4, (worst, events)
    assert not list(killed.glob(".*.tmp")), events


def test_ctrl_c_checkpoints_at_the_next_step_and_says_how_to_resume(tmp_path, corpus_file):
    run = tmp_path / "run"
    proc = subprocess.Popen(command(*ARGS, "--text", str(corpus_file), "--out", str(run)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while steps_logged(run) < 4 and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"tinylm train --resume {run}" in err
    step = torch.load(run / "train_state.pt", weights_only=True)["step"]
    assert 0 < step < 150
    done = subprocess.run(command("--resume", str(run)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert torch.load(run / "train_state.pt", weights_only=True)["step"] == 150

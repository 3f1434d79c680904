"""Several processes through torchrun (gloo on the CPU): the real launcher, the real trainer."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tinylm.cli import main
from tinylm.data.prepare import prepare
from tinylm.run import read_config

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow


def torchrun(*args: str, nproc: int = 2, timeout: int = 240, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **env}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, corpus_file):
    return prepare(corpus_file, "char", tmp_path_factory.mktemp("ddp") / "data")


def test_torchrun_two_processes_train_and_rank_0_writes_the_run(tmp_path, data_dir):
    run = tmp_path / "run"
    done = torchrun("-m", "tinylm", "train", "--preset", "tiny-test", "--data", str(data_dir), "--out", str(run),
                    "--device", "cpu", "--max-steps", "40", "--set", "train.batch_tokens=512",
                    "--set", "train.batch_size=8", "--set", "train.log_interval=5", "--set", "train.eval_interval=20")
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("config.json", "tokenizer.tinylm.json", "model.safetensors", "best.safetensors", "train_state.pt",
                 "metrics.jsonl", "loss.png", "perplexity.png"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*.tmp"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train_loss" in r]
    assert len(train_rows) == 8 and len({r["step"] for r in rows}) == len({r["step"] for r in train_rows})
    assert all(r["processes"] == 2 for r in train_rows)  # both ranks reported every row
    assert train_rows[-1]["tokens"] == 40 * 512  # the global batch: 2 processes x 8 sequences x 32 tokens
    assert train_rows[-1]["train_loss"] < train_rows[0]["train_loss"] - 0.5
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(val) == 2 and val[1] < val[0]
    assert done.stderr.count("tinylm training") == 1  # only rank 0 prints
    state = torch.load(run / "train_state.pt", weights_only=True)
    assert isinstance(state["rng"], list) and len(state["rng"]) == 2  # each rank's dropout RNG, for resume


def test_two_processes_of_batch_b_give_the_gradients_of_one_process_of_batch_2b(tmp_path, data_dir):
    script = str(HERE / "ddp_gradients.py")
    two = torchrun(script, str(data_dir), str(tmp_path / "two.pt"), "4", "256")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "rank 0/2: 4 x 1 sequences" in two.stdout and "rank 1/2: 4 x 1 sequences" in two.stdout
    one = subprocess.run([sys.executable, script, str(data_dir), str(tmp_path / "one.pt"), "8", "256"],
                         capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "rank 0/1: 8 x 1 sequences" in one.stdout
    g2, g1 = torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt")
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-5, atol=1e-7, msg=name)
    # and the ranks did see different data: their losses differ
    # (the two processes share one stdout pipe: their lines may run together, so read values, not lines)
    losses = re.findall(r"loss (\d+\.\d{6})", two.stdout)
    assert len(losses) == 2 and len(set(losses)) == 2, two.stdout


# a learning rate that does not depend on max_steps, so a run resumed with a larger max_steps can be
# compared step for step with one trained straight through
CONSTANT_LR = ["--set", "train.schedule=constant", "--set", "train.warmup_steps=0", "--set", "train.log_interval=1",
               "--set", "train.eval_interval=1000", "--device", "cpu", "--dtype", "float32"]


def train_rows(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "train_loss" in r]


def test_resuming_on_two_processes_many_times_in_a_row_keeps_the_steps_and_only_rank_0_writes(
        tmp_path, corpus_file, capsys):
    """Issue 27, items 2 and 3: a run trained by one process, resumed 8 times on 2 (each resume races, if
    any process but rank 0 touches the run directory or the cache) and then once more on 1, takes exactly
    the steps of a run trained straight through on one process: 256 tokens each, the same windows."""
    run, straight = tmp_path / "run", tmp_path / "straight"
    train = ["train", "--preset", "tiny-test", "--text", str(corpus_file), *CONSTANT_LR]
    assert main([*train, "--out", str(run), "--max-steps", "10"]) == 0
    # a fresh cache: rank 0 prepares the data again (as on another machine); the other process must not
    done = torchrun(str(HERE / "ddp_resume.py"), str(run), "8", "2", TINYLM_CACHE=str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.findall(r"resume \d+: exit (\d+)", done.stdout) == ["0"] * 16  # both ranks, 8 resumes
    changed = {int(rank): json.loads(files) for rank, files in re.findall(r"rank (\d) changed: (.*)", done.stdout)}
    assert changed[1] == [], changed[1]  # rank 1 only reads
    assert any(f.endswith("train_state.pt") for f in " ".join(changed[0]).split())  # the hook sees rank 0's writes
    assert any("/cache/prepared/" in f for f in changed[0])
    assert done.stderr.count("so a step stays 256 tokens") == 1  # said once, at the first resume on 2 processes
    assert read_config(run).train.batch_tokens == 256
    assert main(["train", "--resume", str(run), "--max-steps", "30"]) == 0  # and back on one process
    assert main([*train, "--out", str(straight), "--max-steps", "30"]) == 0
    resumed, expected = train_rows(run), train_rows(straight)
    assert [(r["step"], r["tokens"]) for r in resumed] == [(s, 256 * s) for s in range(1, 31)]
    assert [(r["step"], r["tokens"]) for r in expected] == [(r["step"], r["tokens"]) for r in resumed]
    for a, b in zip(resumed, expected, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4), a["step"]
    w1, w2 = load_file(run / "model.safetensors"), load_file(straight / "model.safetensors")
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4

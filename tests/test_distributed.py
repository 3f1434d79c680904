"""Several processes through torchrun (gloo on the CPU): the real launcher, the real trainer."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinylm.data.prepare import prepare

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow


def torchrun(*args: str, nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
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

"""The `tinylm` command end to end, and its answers to bad input."""

import json
import shutil
import subprocess
import sys

import pytest

from tinylm.cli import main


def tinylm(*args, check=True):
    """Run the real console script (falling back to `python -m tinylm`)."""
    exe = shutil.which("tinylm")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "tinylm", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_prepare_train_sample_eval_end_to_end(tmp_path, corpus_file):
    data, run = tmp_path / "data", tmp_path / "run"
    out = tinylm("prepare", str(corpus_file), "--tokenizer", "char", "--out", str(data), "--val-fraction", "0.1")
    assert "prepared" in out.stderr and (data / "meta.json").is_file()

    out = tinylm("train", "--preset", "tiny-test", "--data", str(data), "--out", str(run),
                 "--max-steps", "40", "--set", "train.eval_interval=20", "--seed", "7")
    assert "done" in out.stderr and "val loss" in out.stderr
    assert {"model.safetensors", "loss.png", "perplexity.png", "metrics.jsonl"} <= {p.name for p in run.iterdir()}

    out = tinylm("sample", str(run), "--prompt", "HAMLET.\n", "--max-new-tokens", "60", "--seed", "3",
                 "--temperature", "0.9", "--top-k", "10")
    assert out.stdout.startswith("HAMLET.\n") and len(out.stdout) >= len("HAMLET.\n") + 60
    again = tinylm("sample", str(run), "--prompt", "HAMLET.\n", "--max-new-tokens", "60", "--seed", "3",
                   "--temperature", "0.9", "--top-k", "10")
    assert again.stdout == out.stdout

    out = tinylm("eval", str(run), "--data", str(data), "--json")
    result = json.loads(out.stdout)
    assert set(result) >= {"loss", "perplexity", "bits_per_byte", "tokens"}
    assert 0 < result["loss"] < 5 and result["tokens"] > 1000
    own = json.loads(tinylm("eval", str(run), "--json").stdout)  # no data named: the run's own validation split
    assert own["loss"] == result["loss"] and own["tokens"] == result["tokens"]

    out = tinylm("eval", str(run), "--text", str(corpus_file))
    assert out.stdout.startswith("loss ") and "bits/byte" in out.stdout


def test_train_resume_extends_a_finished_run(trained_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    assert main(["train", "--resume", str(run), "--max-steps", "170"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 170


def test_help_and_version(capsys):
    for verb in ("prepare", "train", "sample", "eval", "presets"):
        with pytest.raises(SystemExit) as exit_:
            main([verb, "--help"])
        assert exit_.value.code == 0
    assert "model.n_layer" in capsys.readouterr().out  # train --help lists the --set keys
    assert main(["presets"]) == 0
    assert "shakespeare-char" in capsys.readouterr().out
    assert tinylm("--version").stdout.startswith("tinylm ")


def one_line_error(capsys, argv, fragment):
    capsys.readouterr()  # drop earlier output
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert fragment in err, err


def test_bad_input_gives_one_line_errors(capsys, tmp_path, trained_run, corpus_file):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    cases = [
        (["prepare", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "d")], "no such file or folder"),
        (["prepare", str(empty), "--out", str(tmp_path / "d")], "is empty"),
        (["train", "--text", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "r")], "no such file"),
        (["train", "--text", str(empty), "--out", str(tmp_path / "r")], "is empty"),
        (["train", "--set", "model.n_layerz=2"], "did you mean 'model.n_layer'"),
        (["train", "--set", "train.lr=fast"], "train.lr expects a number"),
        (["train", "--max-steps", "ten"], "expects an integer"),
        (["train", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "--device", "cuda", "--out", str(tmp_path / "r")], "no CUDA GPU"),
        (["train", "--dtype", "float16", "--device", "cpu", "--out", str(tmp_path / "r")], "float16 autocast"),
        (["train", "--set", "train.optimizer=sgdx"], "train.optimizer 'sgdx' does not exist; choose one of adamw"),
        (["train", "--out", str(tmp_path / "r"), "--set", "train.batch_tokens=2560"],
         "train.batch_tokens 2,560 is not divisible by the micro-batch tokens (batch_size 16 x context 128"),
        (["train", "--out", str(tmp_path / "r"), "--set", "train.batch_tokens=1000"], "not a whole number of"),
        (["train", "--out", str(tmp_path / "r"), "--set", "train.schedule=linear"], "train.schedule 'linear'"),
        (["train", "--out", str(tmp_path / "r"), "--set", "train.trackers=mlflow"], "unknown tracker 'mlflow'"),
        (["train", "--resume", str(tmp_path / "missing")], "does not exist"),
        (["train", "--resume", str(trained_run), "--set", "model.n_layer=3"], "only train.* settings"),
        (["train", "--resume", str(trained_run), "--text", str(corpus_file)], "cannot be combined with --resume"),
        (["sample", str(tmp_path)], "not a tinylm run directory"),
        (["eval", str(trained_run), "--data", str(tmp_path), "--text", str(corpus_file)], "give one of --data"),
        (["eval", str(trained_run), "--data", str(tmp_path)], "not a complete data directory"),
    ]
    for argv, fragment in cases:
        one_line_error(capsys, argv, fragment)
    assert not (tmp_path / "r").exists()  # each refused before any work started


def test_data_dir_from_another_tokenizer_is_refused(capsys, tmp_path, trained_run):
    other = tmp_path / "digits.txt"
    other.write_text("0123456789 " * 500)
    data = tmp_path / "digits"
    assert main(["prepare", str(other), "--out", str(data)]) == 0
    one_line_error(capsys, ["eval", str(trained_run), "--data", str(data)], "different tokenizer")
    # the fix the message suggests works
    fixed = tmp_path / "digits-same-tok"
    assert main(["prepare", str(other), "--out", str(fixed), "--tokenizer-from", str(trained_run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(trained_run), "--data", str(fixed), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] > 0


def test_truncated_weights_are_a_clear_error(capsys, tmp_path, trained_run):
    run = tmp_path / "broken"
    shutil.copytree(trained_run, run)
    for name in ("best.safetensors", "model.safetensors"):
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 3])
    one_line_error(capsys, ["sample", str(run), "--max-new-tokens", "5"], "corrupt or truncated")
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"]["max_steps"] = 10_000
    (run / "config.json").write_text(json.dumps(cfg))
    one_line_error(capsys, ["train", "--resume", str(run)], "does not match train_state.pt")

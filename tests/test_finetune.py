"""`tinylm finetune` end to end on a tiny character-level base: LoRA and full fine-tuning on Shakespeare
instructions, exact resume, chat, merge, eval, bad input, and two processes under torchrun."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import tinylm
from tinylm import fileio
from tinylm.chat.templates import get_template
from tinylm.cli import main
from tinylm.data.examples import load_examples
from tinylm.data.prepare import prepare
from tinylm.data.records import shakespeare_instructions
from tinylm.errors import CheckpointError
from tinylm.evaluation.perplexity import score_examples
from tinylm.model.lora import adapter_state, base_state
from tinylm.run import ADAPTER_FILE, MODEL_FILE, read_config, save_weights
from tinylm.training import train
from tinylm.training.finetune import finetune_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def instructions(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("instructions") / "speakers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in shakespeare_instructions(limit=160)), encoding="utf-8")
    return path


def config(base: Path, data: Path, out: Path, method: str = "lora", **train: object):
    cfg = finetune_config(base, str(data), method)
    cfg.train.out_dir = str(out)
    cfg.train.epochs = 0.0
    settings = {"max_steps": 30, "eval_interval": 15, "log_interval": 5, "lr": 1e-2 if method == "lora" else 3e-3,
                "min_lr": 1e-3 if method == "lora" else 3e-4, "warmup_steps": 2, "dtype": "float32", **train}
    for key, value in settings.items():
        setattr(cfg.train, key, value)
    cfg.lora.targets = "qkv,proj,fc,mlp_proj"
    return cfg


def val_loss(model: torch.nn.Module, examples) -> float:
    nats, count = score_examples(model, examples)
    return nats / count


def files(run: Path) -> dict[str, str]:
    return {p.name: fileio.sha256_file(p) for p in run.iterdir() if p.suffix == ".safetensors"}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_finetuning_lowers_the_validation_loss_on_response_tokens(trained_run, instructions, tmp_path, method):
    base_files = files(trained_run)
    result = train(config(trained_run, instructions, tmp_path / method, method))
    run = tinylm.load(result.run_dir, device="cpu", dtype="float32")
    cfg = run.config
    assert cfg.finetune.format == "instruction" and cfg.finetune.template == "plain"  # char vocabulary: no '#'
    val = load_examples(str(instructions), "instruction", run.tokenizer, get_template("plain"), cfg.seq_len,
                        quiet=True).val
    before = val_loss(tinylm.load(trained_run, device="cpu", dtype="float32").model, val)
    after = val_loss(run.model, val)
    assert after < before - 0.3, (before, after)
    assert result.best_val_loss == pytest.approx(min(after, result.best_val_loss), abs=1e-4)
    assert files(trained_run) == base_files  # the base run is untouched
    names = {p.name for p in result.run_dir.iterdir()}
    if method == "lora":
        assert ADAPTER_FILE in names and MODEL_FILE not in names
        base = tinylm.load(trained_run, device="cpu", dtype="float32").model.state_dict()
        tuned = base_state(run.model)
        assert all(torch.equal(tuned[k], v) for k, v in base.items())  # base tensors bit-identical
        assert set(adapter_state(run.model)) and cfg.finetune.base_sha256 == base_files[cfg.finetune.base_weights]
        assert (result.run_dir / ADAPTER_FILE).stat().st_size < (trained_run / MODEL_FILE).stat().st_size / 3
    else:
        assert MODEL_FILE in names and ADAPTER_FILE not in names and not cfg.finetune.is_adapter_run
    reply = run.chat([{"role": "user", "content": "Who says: Good my lord, what is the matter?"}],
                     max_new_tokens=12, temperature=0)
    assert isinstance(reply, str) and "User:" not in reply


def test_resumed_lora_run_equals_the_uninterrupted_run(trained_run, instructions, tmp_path, monkeypatch, capsys):
    from test_training import TIMING, Crash, crash_at_step, metrics

    def cfg(name: str):
        c = config(trained_run, instructions, tmp_path / name, max_steps=10, eval_interval=4, log_interval=2)
        c.lora.dropout = 0.1  # dropout masks come from the checkpointed RNG
        return c

    straight = train(cfg("straight")).run_dir
    crash_at_step(monkeypatch, 6)
    with pytest.raises(Crash):
        train(cfg("crashed"))
    monkeypatch.undo()
    assert torch.load(tmp_path / "crashed" / "train_state.pt", weights_only=True)["step"] == 4
    for flags, fragment in ((["--lora-alpha", "64"], "lora.alpha cannot change when resuming"),
                            (["--template", "chat"], "finetune.template cannot change when resuming")):
        assert main(["finetune", "--resume", str(tmp_path / "crashed"), *flags]) == 1  # refused before any work
        assert fragment in capsys.readouterr().err
    assert main(["finetune", "--resume", str(tmp_path / "crashed")]) == 0
    a, b = (tinylm.load(d, checkpoint="latest", device="cpu").model for d in (straight, tmp_path / "crashed"))
    assert all(torch.equal(v, adapter_state(b)[k]) for k, v in adapter_state(a).items())
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in metrics(straight)] == [
        {k: v for k, v in r.items() if k not in TIMING} for r in metrics(tmp_path / "crashed")]


def test_cli_finetune_chat_merge_eval(trained_run, instructions, tmp_path, capsys):
    out, merged = tmp_path / "lora", tmp_path / "merged"
    assert main(["finetune", str(trained_run), "--data", str(instructions), "--out", str(out), "--max-steps", "6",
                 "--lora-r", "4", "--lora-targets", "qkv,head", "--lr", "0.02", "--dtype", "float32",
                 "--set", "train.eval_interval=3"]) == 0
    assert "tinylm sample" in capsys.readouterr().err
    cfg = read_config(out)
    assert (cfg.lora.r, cfg.lora.targets, cfg.train.max_steps, cfg.train.epochs) == (4, "qkv,head", 6, 0.0)
    assert main(["sample", str(out), "--chat", "--prompt", "Who says: Farewell.", "--max-new-tokens", "8",
                 "--seed", "1"]) == 0
    assert capsys.readouterr().out.strip() != ""
    assert main(["eval", str(out), "--json"]) == 0
    evaluation = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluation["tokens"] > 0 and evaluation["bits_per_byte"] is None
    assert main(["merge", str(out), "--out", str(merged)]) == 0
    assert "no longer shares the embedding" in capsys.readouterr().out  # the head had an adapter
    ids = torch.randint(0, 40, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapted = tinylm.load(out, device="cpu", dtype="float32").model(ids)[0]
        folded = tinylm.load(merged, device="cpu", dtype="float32").model(ids)[0]
    torch.testing.assert_close(folded, adapted, atol=1e-5, rtol=0)
    assert read_config(merged).finetune.template == "plain" and not read_config(merged).finetune.is_adapter_run
    capsys.readouterr()
    assert main(["finetune", "--resume", str(merged)]) == 1  # standalone weights: fine-tune it as a base instead
    assert "is a merged run" in capsys.readouterr().err


def test_continued_pretraining_on_text_files_with_the_base_tokenizer(trained_run, corpus_text, tmp_path, capsys):
    """A .txt file (and a .jsonl of {"text"} records, and a --val-data text file) is prepared once with
    the base run's own tokenizer (cached by its fingerprint) and trained on, LoRA and full."""
    text, val, records = tmp_path / "more.txt", tmp_path / "val.txt", tmp_path / "more.jsonl"
    text.write_text(corpus_text[:20000], encoding="utf-8")
    val.write_text(corpus_text[20000:24000], encoding="utf-8")
    records.write_text("".join(json.dumps({"text": corpus_text[i:i + 2000]}) + "\n" for i in range(0, 20000, 2000)))
    common = ["--max-steps", "3", "--dtype", "float32", "--set", "train.eval_interval=3"]
    assert main(["finetune", str(trained_run), "--data", str(text), "--out", str(tmp_path / "a"), *common]) == 0
    first = capsys.readouterr().err
    assert "more.txt with the base's char tokenizer into" in first
    assert main(["finetune", str(trained_run), "--data", str(text), "--out", str(tmp_path / "b"), "--method", "full",
                 *common]) == 0
    assert "with the base's char tokenizer into" not in capsys.readouterr().err  # the cached preparation is reused
    assert main(["finetune", str(trained_run), "--data", str(records), "--val-data", str(val),
                 "--out", str(tmp_path / "c"), *common]) == 0
    for name in "abc":
        cfg = read_config(tmp_path / name)
        assert cfg.finetune.format == "text" and (tmp_path / name / "metrics.jsonl").is_file()
    assert main(["sample", str(tmp_path / "a"), "--prompt", "KING", "--max-new-tokens", "4"]) == 0


def test_bad_input_is_one_line_errors(trained_run, instructions, tmp_path, capsys):
    def error(*argv: str) -> str:
        assert main(list(argv)) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
        return err

    args = ["--data", str(instructions), "--max-steps", "2", "--set", "train.eval_interval=2"]
    out = ["--out", str(tmp_path / "x")]
    assert "the base run" in error("finetune", str(tmp_path / "nope"), *args, *out)
    assert "--lora-r" in error("finetune", str(trained_run), *args, *out, "--lora-r", "0")
    assert "no layer 'gate'" in error("finetune", str(trained_run), *args, *out, "--lora-targets", "qkv,gate")
    assert "--epochs 0 with no --max-steps" in error("finetune", str(trained_run), "--data", str(instructions), *out,
                                                    "--epochs", "0")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "is empty" in error("finetune", str(trained_run), "--data", str(empty), *out)
    text = tmp_path / "text.txt"
    text.write_text("Some other words entirely, with other letters: qzxj!\n" * 50)
    data_dir = prepare(text, "char", tmp_path / "otherdata")
    capsys.readouterr()
    assert "another tokenizer" in error("finetune", str(trained_run), "--data", str(data_dir), *out)
    # an adapter whose base weights changed since it was trained
    base = tmp_path / "base"
    shutil.copytree(trained_run, base)
    assert main(["finetune", str(base), *args, "--out", str(tmp_path / "adapter")]) == 0
    run = tinylm.load(base, device="cpu")
    with torch.no_grad():
        run.model.tok_emb.weight.add_(0.01)
    save_weights(run.model, run.weights, run.metadata)
    capsys.readouterr()
    assert "changed since" in error("sample", str(tmp_path / "adapter"), "--max-new-tokens", "2")
    with pytest.raises(CheckpointError, match="trained on other base weights"):
        tinylm.load(base, device="cpu").attach_adapter("other", tmp_path / "adapter")
    original = tinylm.load(trained_run, device="cpu")
    other = original.attach_adapter("other", tmp_path / "adapter")  # trained on a copy of the same weights
    assert other.name == "other" and other.chat_template.name == "plain"


def test_torchrun_two_processes_train_one_lora_adapter(trained_run, instructions, tmp_path):
    from test_distributed import torchrun

    out = tmp_path / "ddp"
    done = torchrun("-m", "tinylm", "finetune", str(trained_run), "--data", str(instructions), "--out", str(out),
                    "--device", "cpu", "--max-steps", "6", "--lora-dropout", "0.1", "--set", "train.batch_size=4",
                    "--set", "train.log_interval=2", "--set", "train.eval_interval=3", "--lr", "0.01")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / ADAPTER_FILE).is_file() and not (out / MODEL_FILE).exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["processes"] for r in rows if "train_loss" in r] == [2, 2, 2]
    assert done.stderr.count("tinylm training") == 1  # only rank 0 prints
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert len(state["rng"]) == 2 and state["step"] == 6
    adapter = adapter_state(tinylm.load(out, device="cpu").model)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if k.endswith("lora_B"))


def test_text_the_base_vocabulary_lacks_is_counted_and_warned_about(trained_run, tmp_path):
    """Continued pre-training on text with characters the base's char vocabulary lacks: they become
    <unk>; preparation says how many (and records it), rather than training on them silently."""
    from tinylm.console import TinylmWarning
    from tinylm.data.prepare import read_meta
    from tinylm.tokenizers import load_tokenizer

    text = tmp_path / "unk.txt"
    text.write_text("the cat ZZZ sat \u00e9 \U0001F642\n" * 40, encoding="utf-8")
    tok = load_tokenizer(trained_run)
    lacking = sum(1 for c in text.read_text(encoding="utf-8") if c not in tok.chars)
    assert lacking >= 40
    with pytest.warns(TinylmWarning, match=rf"{lacking:,} of .* tokens of .* are the char tokenizer's <unk>"):
        out = prepare(text, tok, tmp_path / "data")
    assert read_meta(out)["unknown_tokens"] == lacking

"""Train, resume, sample and evaluate end to end with each tokenizer kind."""

import json

import pytest

import tinylm
from tinylm.cli import main
from tinylm.config import EvalConfig
from tinylm.data import read_meta
from tinylm.evaluation import evaluate

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("spec, vocab, dtype", [
    ("char", None, "uint16"), ("word:2000", 2000, "uint16"), ("gpt2", 50257, "uint16"), ("bpe:512", 512, "uint16"),
])
def test_train_resume_sample_eval_with_each_tokenizer(tmp_path, corpus_file, capsys, spec, vocab, dtype):
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["prepare", str(corpus_file), "--tokenizer", spec, "--out", str(data)]) == 0
    meta = read_meta(data)
    assert meta["tokenizer"]["spec"] == spec and meta["dtype"] == dtype
    assert vocab is None or meta["tokenizer"]["vocab_size"] == vocab

    args = ["train", "--preset", "tiny-test", "--data", str(data), "--out", str(run), "--set", "train.eval_interval=10",
            "--set", "model.vocab_multiple=64"]
    assert main([*args, "--max-steps", "20"]) == 0
    assert main(["train", "--resume", str(run), "--max-steps", "30"]) == 0  # restores the tokenizer from the run
    loaded = tinylm.load(run)
    assert loaded.tokenizer.kind == spec.split(":")[0]
    assert loaded.tokenizer.fingerprint() == meta["tokenizer"]["fingerprint"]
    assert loaded.config.data.tokenizer == spec
    assert loaded.model.cfg.vocab_size % 64 == 0 and loaded.model.cfg.vocab_size >= loaded.tokenizer.vocab_size
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 30 and rows[-1]["val_loss"] < rows[0]["train_loss"]

    capsys.readouterr()
    assert main(["sample", str(run), "--prompt", "HAMLET", "--max-new-tokens", "40", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("HAMLET")
    ids = list(tinylm.generation.generate_ids(loaded.model, loaded.tokenizer.encode("the"), 200, temperature=2.0,
                                              seed=0, vocab_size=loaded.tokenizer.vocab_size))
    assert max(ids) < loaded.tokenizer.vocab_size  # padded rows of the embedding are never sampled

    result = evaluate(run, EvalConfig(text=str(corpus_file)), show_progress=False)
    assert result.tokens > 1000 and 0 < result.bits_per_byte < 8


def test_gpt2_embedding_padded_to_a_multiple_of_64(tmp_path, corpus_file):
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny-test", "--text", str(corpus_file), "--tokenizer", "gpt2",
                 "--set", "model.vocab_multiple=64", "--max-steps", "2", "--out", str(run)]) == 0
    loaded = tinylm.load(run)
    assert loaded.tokenizer.vocab_size == 50257 and loaded.model.tok_emb.weight.shape[0] == 50304


def test_a_data_dir_of_another_tokenizer_cannot_resume_a_run(tmp_path, corpus_file, capsys):
    char_data, bpe_data, run = tmp_path / "char", tmp_path / "bpe", tmp_path / "run"
    assert main(["prepare", str(corpus_file), "--tokenizer", "char", "--out", str(char_data)]) == 0
    assert main(["prepare", str(corpus_file), "--tokenizer", "bpe:300", "--out", str(bpe_data)]) == 0
    assert main(["train", "--preset", "tiny-test", "--data", str(char_data), "--out", str(run),
                 "--max-steps", "5"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(bpe_data)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "different tokenizer" in err and len(err.splitlines()) == 1

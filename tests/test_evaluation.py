import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tinylm
from tinylm.config import EvalConfig, ModelConfig
from tinylm.data.prepare import prepare
from tinylm.errors import ConfigError, DataError
from tinylm.cli import main
from tinylm.data.spec import read_source
from tinylm.evaluation import evaluate, score_tokens
from tinylm.evaluation.perplexity import scoring_windows
from tinylm.evaluation.run_eval import dataset_dir_for
from tinylm.model import GPT


def reference_nll(model, tokens, context):
    """Score token i from the tokens of its own window, one window at a time, by hand."""
    total = 0.0
    for start in range(0, len(tokens) - 1, context):
        window = torch.tensor(tokens[start:start + context + 1], dtype=torch.long)[None]
        logits, _ = model(window[:, :-1])
        logp = F.log_softmax(logits.double(), dim=-1)
        total -= logp[0, torch.arange(window.shape[1] - 1), window[0, 1:]].sum().item()
    return total


@pytest.mark.parametrize("n", [2, 50, 64, 65, 200])
def test_windowed_scoring_matches_a_by_hand_reference(n):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=40, context=16, n_layer=2, n_head=2, d_model=16)).eval()
    tokens = np.random.default_rng(n).integers(0, 40, n).astype(np.uint16)
    nats, count = score_tokens(model, tokens, batch_size=3)
    assert count == n - 1
    assert nats == pytest.approx(reference_nll(model, tokens.tolist(), 16), rel=1e-5)


@pytest.mark.parametrize("stride", [0, 8])
def test_char_model_bits_per_byte_is_loss_over_ln2_on_ascii(trained_run, tmp_path, corpus_text, stride):
    text = tmp_path / "ascii.txt"
    text.write_text(corpus_text[-5000:], encoding="utf-8")
    result = evaluate(trained_run, EvalConfig(text=str(text), dtype="float32", stride=stride), show_progress=False)
    assert result.tokens == result.bytes == 4999  # one byte per character; the first one is not scored
    assert result.bits_per_byte == pytest.approx(result.loss / math.log(2), rel=1e-12)
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    record = json.loads((trained_run / "evals.jsonl").read_text().splitlines()[-1])
    assert record["loss"] == result.loss and len(record["sha256"]) == 64
    assert record["stride"] == result.stride == (stride or 32) and record["dataset"] is None


def test_bits_per_byte_counts_utf8_bytes(trained_run, tmp_path):
    text = tmp_path / "accents.txt"
    text.write_text("naïve café — déjà vu\n" * 20, encoding="utf-8")
    with pytest.warns(tinylm.console.TinylmWarning, match="not in the run's vocabulary"):
        result = evaluate(trained_run, EvalConfig(text=str(text)), show_progress=False)
    scored_bytes = len(text.read_bytes()) - 1  # all but the first character ("n") are scored
    assert result.bytes == scored_bytes
    assert result.bits_per_byte == pytest.approx(result.loss * result.tokens / (math.log(2) * scored_bytes))


def test_eval_on_the_training_data_dir_and_its_split(trained_run):
    cfg = tinylm.load(trained_run).config
    from tinylm.data import resolve_data_dir
    data_dir, _ = resolve_data_dir(cfg.data)
    val = evaluate(trained_run, EvalConfig(data=str(data_dir)), show_progress=False)
    train_split = evaluate(trained_run, EvalConfig(data=str(data_dir), split="train"), show_progress=False)
    assert val.tokens > 0 and train_split.tokens > 5 * val.tokens
    assert 1.0 < val.loss < math.log(cfg.model.vocab_size)


def test_eval_refuses_data_from_another_tokenizer(trained_run, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("a different alphabet: 0123456789 {}[]\n" * 50)
    data_dir = prepare(str(other), "char", tmp_path / "data")
    with pytest.raises(DataError, match="different tokenizer.*--tokenizer-from"):
        evaluate(trained_run, EvalConfig(data=str(data_dir)), show_progress=False)
    own = evaluate(trained_run, EvalConfig(), show_progress=False)  # nothing named: the run's own validation split
    assert own.tokens > 0 and own.loss < 5


# --------------------------------------------------------------------------- sliding windows


def per_token_reference(model, tokens, context, stride):
    """Mean NLL of tokens 1..n-1, one forward pass per token: token i is predicted from the
    tokens since the start of the window that scores it (all i of them while i <= context,
    else context + 1 - stride plus its offset among that window's `stride` targets)."""
    total = 0.0
    for i in range(1, len(tokens)):
        history = i if i <= context else context + 1 - stride + (i - context - 1) % stride
        x = torch.tensor(tokens[i - history:i], dtype=torch.long)[None]
        logits, _ = model(x)
        total -= F.log_softmax(logits[0, -1].double(), dim=-1)[tokens[i]].item()
    return total / (len(tokens) - 1)


@pytest.fixture(scope="module")
def trained_model_and_tokens(trained_run, corpus_text):
    run = tinylm.load(trained_run, device="cpu", dtype="float32")
    return run.model.eval(), np.asarray(run.tokenizer.encode(corpus_text[-150:]), dtype=np.uint16)


@pytest.mark.parametrize("stride", [8, 13])
def test_sliding_window_loss_matches_a_per_token_reference(trained_model_and_tokens, stride):
    model, tokens = trained_model_and_tokens
    nats, count = score_tokens(model, tokens, batch_size=3, stride=stride)
    assert count == len(tokens) - 1 == 149
    assert abs(nats / count - per_token_reference(model, tokens.tolist(), 32, stride)) < 1e-5


def test_stride_equal_to_the_context_is_the_non_overlapping_score(trained_model_and_tokens):
    model, tokens = trained_model_and_tokens
    assert score_tokens(model, tokens, stride=32) == score_tokens(model, tokens)
    nats, count = score_tokens(model, tokens, stride=32, batch_size=2)
    assert abs(nats / count - per_token_reference(model, tokens.tolist(), 32, 32)) < 1e-5
    assert nats == pytest.approx(reference_nll(model, tokens.tolist(), 32), rel=1e-5)


@pytest.mark.parametrize("n,context,stride", [(2, 4, 1), (10, 4, 4), (11, 4, 3), (100, 16, 5), (97, 16, 16),
                                              (17, 16, 7), (18, 16, 7)])
def test_scoring_windows_score_each_token_once_with_enough_history(n, context, stride):
    scored = []
    for start, length, count in scoring_windows(n, context, stride):
        assert length <= context + 1 and start + length <= n and 1 <= count <= length - 1
        targets = range(start + length - count, start + length)
        assert all(t - start >= min(t, context + 1 - stride) for t in targets)  # history of each target
        scored += targets
    assert scored == list(range(1, n))


def test_smaller_stride_scores_real_text_lower_or_equal(trained_run, tmp_path, corpus_text):
    text = tmp_path / "hamlet-tail.txt"
    text.write_text(corpus_text[-3000:], encoding="utf-8")
    full = evaluate(trained_run, EvalConfig(text=str(text)), show_progress=False)
    same = evaluate(trained_run, EvalConfig(text=str(text), stride=32), show_progress=False)
    sliding = evaluate(trained_run, EvalConfig(text=str(text), stride=4), show_progress=False)
    assert same.loss == full.loss and full.stride == same.stride == 32 and sliding.stride == 4
    assert sliding.tokens == full.tokens and sliding.bytes == full.bytes
    assert sliding.loss <= full.loss


def test_stride_out_of_range_and_two_sources_are_config_errors(trained_run, corpus_file):
    for stride in (33, -1):
        with pytest.raises(ConfigError, match=rf"training window \(32\), got {stride}"):
            evaluate(trained_run, EvalConfig(text=str(corpus_file), stride=stride), show_progress=False)
    with pytest.raises(ConfigError, match="give one of.*--dataset.*got --text and --dataset"):
        evaluate(trained_run, EvalConfig(text=str(corpus_file), dataset="tinystories"), show_progress=False)
    assert main(["eval", str(trained_run), "--text", str(corpus_file), "--stride", "64"]) == 1


# --------------------------------------------------------------------------- --dataset


def write_tinystories(root, stories_train, stories_val):
    """The raw TinyStories V2 layout: stories separated by lines holding <|endoftext|>."""
    folder = root / "tinystories"
    folder.mkdir()
    for name, stories in (("train", stories_train), ("valid", stories_val)):
        (folder / f"TinyStoriesV2-GPT4-{name}.txt").write_text(
            "".join(f"{story}\n<|endoftext|>\n" for story in stories), encoding="utf-8")
    return folder / "TinyStoriesV2-GPT4-valid.txt"


def test_eval_on_a_catalog_dataset_split_through_the_cli(trained_run, tmp_path, corpus_text, capsys, no_network):
    paragraphs = [p.strip() for p in corpus_text[:12_000].split("\n\n") if p.strip()]
    valid = write_tinystories(tmp_path, paragraphs[:10], paragraphs[10:30])
    argv = ["eval", str(trained_run), "--dataset", "tinystories", "--source-dir", str(tmp_path), "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert set(first) >= {"loss", "perplexity", "bits_per_byte", "tokens", "bytes", "stride"}
    assert first["stride"] == 32 and first["tokens"] > 500
    # the same tokens as scoring the raw file as text: prepared with the run's own tokenizer
    as_text = evaluate(trained_run, EvalConfig(text=str(valid)), show_progress=False)
    assert first["loss"] == pytest.approx(as_text.loss, rel=1e-6) and first["tokens"] == as_text.tokens
    record = json.loads((trained_run / "evals.jsonl").read_text().splitlines()[-2])
    assert record["dataset"] == "tinystories" and record["split"] == "val" and record["stride"] == 32

    # prepared once, the val split only (the train file is never tokenized), then reused
    assert main([*argv, "--stride", "16"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["stride"] == 16 and second["tokens"] == first["tokens"]
    src = read_source("tinystories", source_dir=str(tmp_path))
    fingerprint = tinylm.load(trained_run).tokenizer.fingerprint()
    out = dataset_dir_for(src, fingerprint, "val")
    meta = json.loads((out / "meta.json").read_text())
    assert list(meta["splits"]) == ["val"] and meta["tokenizer"]["fingerprint"] == fingerprint
    assert len([d for d in out.parent.iterdir() if d.name.startswith("tinystories-val")]) == 1
    assert dataset_dir_for(src, "0" * 64, "val") != out  # another tokenizer never shares the directory

    with pytest.raises(DataError, match=r"tinystories has no 'test' split \(it has: train, val\)"):
        evaluate(trained_run, EvalConfig(dataset="tinystories", source_dir=str(tmp_path), split="test"),
                 show_progress=False)
    with pytest.raises(DataError, match=r"shakespeare has no 'test' split \(it has: train, val\)"):
        evaluate(trained_run, EvalConfig(dataset="shakespeare", split="test"), show_progress=False)
    with pytest.raises(DataError, match="not a known dataset"):
        evaluate(trained_run, EvalConfig(dataset="no-such-set"), show_progress=False)

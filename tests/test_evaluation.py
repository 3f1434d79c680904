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
from tinylm.evaluation import evaluate, score_tokens
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


def test_char_model_bits_per_byte_is_loss_over_ln2_on_ascii(trained_run, tmp_path, corpus_text):
    text = tmp_path / "ascii.txt"
    text.write_text(corpus_text[-5000:], encoding="utf-8")
    result = evaluate(trained_run, EvalConfig(text=str(text), dtype="float32"), show_progress=False)
    assert result.tokens == result.bytes == 4999
    assert result.bits_per_byte == pytest.approx(result.loss / math.log(2), rel=1e-12)
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    record = json.loads((trained_run / "evals.jsonl").read_text().splitlines()[-1])
    assert record["loss"] == result.loss and len(record["sha256"]) == 64


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
    with pytest.raises(ConfigError, match="exactly one of"):
        evaluate(trained_run, EvalConfig(), show_progress=False)

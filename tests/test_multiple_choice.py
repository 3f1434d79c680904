"""HellaSwag, multiple-choice and cloze scoring, checked against log-likelihoods computed by hand."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
import torch
import torch.nn.functional as F

import tinylm
from tinylm.cli import main
from tinylm.data import remote
from tinylm.errors import DataError
from tinylm.evaluation.multiple_choice import (HELLASWAG_URL, Item, choice_logprobs, read_items, score_items,
                                               subsample)

ITEMS = [
    {"ind": 4, "activity_label": "Theatre", "ctx_a": "Enter the ghost.", "ctx_b": "hamlet",
     "ctx": "Enter the ghost. Hamlet", "label": 1, "split": "val", "split_type": "indomain",
     "endings": ["zzqx vvk.", "speaks to it and follows.", "qq jj kk.", "xxxxxxx"], "source_id": "fixture~1"},
    {"ind": 9, "activity_label": "Theatre", "ctx_a": "KING. Good Hamlet, cast thy nighted colour off,", "ctx_b": "",
     "ctx": "KING. Good Hamlet, cast thy nighted colour off,", "label": 0, "split": "val",
     "split_type": "zeroshot", "endings": ["and let thine eye look like a friend on Denmark.", "zq", "xj vq", "Qz"],
     "source_id": "fixture~2"},
    {"ind": 11, "activity_label": "Long", "ctx": "Horatio says that it is but our fantasy. " * 6,
     "label": 2, "endings": ["a", "and will not let belief take hold of him", "the ghost", "q"], "split": "val"},
]


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def by_hand(run, context: str, choice: str) -> tuple[float, bool]:
    """Log-probability of `choice` after `context`: one full forward pass per choice (a choice
    longer than the model's context keeps its end)."""
    ctx = run.tokenizer.encode(context)
    ids = run.tokenizer.encode(choice)[-run.model.cfg.context:]
    seq = (ctx + ids)[-(run.model.cfg.context + 1):]
    with torch.no_grad():
        logits, _ = run.model.float()(torch.tensor([seq[:-1]]))
    logp = F.log_softmax(logits[0].float(), -1)[-len(ids):]
    target = torch.tensor(ids)
    return float(logp.gather(1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())


def test_hellaswag_scores_match_hand_computed_log_likelihoods(trained_run, tmp_path):
    run = tinylm.load(trained_run, device="cpu", dtype="float32")
    items = read_items(write_jsonl(tmp_path / "hs.jsonl", ITEMS), "hellaswag")
    assert items[0].choices[1] == " speaks to it and follows." and items[0].label == 1
    assert len(run.tokenizer.encode(items[2].context)) > run.model.cfg.context  # this one is truncated

    scored = choice_logprobs(run.model, run.tokenizer, items, batch_size=3)  # batches mix items and lengths
    hits = hits_norm = 0
    for item, choices in zip(items, scored, strict=True):
        expected = [by_hand(run, item.context, c)[0] for c in item.choices]
        assert [s for s, _, _ in choices] == pytest.approx(expected, abs=1e-4)
        hits += max(range(4), key=expected.__getitem__) == item.label
        norm = [e / len(c.strip()) for e, c in zip(expected, item.choices, strict=True)]
        hits_norm += max(range(4), key=norm.__getitem__) == item.label
    result = score_items(run.model, run.tokenizer, items, "hellaswag")
    assert result.items == 3
    assert result.accuracy == pytest.approx(hits / 3) and result.accuracy_norm == pytest.approx(hits_norm / 3)
    assert hits_norm >= 2  # a model trained on Shakespeare prefers the Shakespeare endings per character


def test_cloze_accuracy_is_greedy_reproduction_of_the_continuation(trained_run, tmp_path):
    run = tinylm.load(trained_run, device="cpu", dtype="float32")
    context = "To be, or not to be"  # context + continuation fit the model's 32-token window
    greedy = run.generate(context, max_new_tokens=6, temperature=0)
    path = write_jsonl(tmp_path / "cloze.jsonl", [{"context": context, "continuation": greedy},
                                                  {"context": context, "continuation": "QZXJQ"}])
    items = read_items(path, "cloze")
    assert [by_hand(run, context, greedy)[1], by_hand(run, context, "QZXJQ")[1]] == [True, False]
    result = score_items(run.model, run.tokenizer, items, "cloze")
    assert result.accuracy == 0.5 and result.accuracy_norm is None


def test_generic_choices_file_and_the_cli(trained_run, tmp_path, capsys):
    path = write_jsonl(tmp_path / "mc.jsonl", [
        {"context": "Good night, sweet", "choices": [" prince", " qzxj"], "label": 0},
        {"context": "Something is rotten in the state of", "choices": [" Xqzzy", " Denmark"], "label": 1}])
    assert main(["eval", str(trained_run), "--choices", path, "--json", "--dtype", "float32"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "choices" and result["items"] == 2 and 0 <= result["accuracy"] <= 1
    record = json.loads((trained_run / "evals.jsonl").read_text().splitlines()[-1])
    assert record["task"] == "choices" and record["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert main(["eval", str(trained_run), "--choices", path, "--cloze", path]) == 1


def test_hellaswag_default_file_from_a_local_copy_or_a_download(trained_run, tmp_path, monkeypatch, capsys,
                                                                 no_network):
    data = "".join(json.dumps(r) + "\n" for r in ITEMS[:2]).encode()
    (tmp_path / "copy" / "hellaswag").mkdir(parents=True)
    (tmp_path / "copy" / "hellaswag" / "hellaswag_val.jsonl").write_bytes(data)
    monkeypatch.setenv("TINYLM_DATA_DIR", str(tmp_path / "copy"))
    assert main(["eval", str(trained_run), "--hellaswag", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 2

    class Fake:
        def info(self, url):
            return remote.RemoteInfo(len(data), True)

        def open(self, url, start=0):
            assert url == HELLASWAG_URL
            return io.BytesIO(data[start:])

    monkeypatch.delenv("TINYLM_DATA_DIR")
    remote.set_transport(Fake())
    try:
        assert main(["eval", str(trained_run), "--hellaswag", "--limit", "1", "--json"]) == 0
    finally:
        remote.set_transport(None)
    assert json.loads(capsys.readouterr().out)["items"] == 1


@pytest.mark.parametrize("records, kind, fragment", [
    ([{"ctx": "a", "endings": ["b", "c"], "label": 0}, {"ctx": "a", "label": 0}], "hellaswag",
     "line 2 has no 'endings' field"),
    ([{"ctx": "a", "endings": ["b", "c"], "label": 5}], "hellaswag", "line 1: label 5 does not index its 2 choices"),
    ([{"context": "a", "choices": "bc", "label": 0}], "choices", "'choices' must be a list of strings"),
    ([{"context": "a"}], "cloze", "line 1 has no 'continuation' field"),
    ([], "hellaswag", "is empty"),
])
def test_bad_multiple_choice_files_are_clear_errors(tmp_path, records, kind, fragment):
    with pytest.raises(DataError, match=fragment):
        read_items(write_jsonl(tmp_path / "bad.jsonl", records), kind)


def test_subsample_is_seeded_and_keeps_file_order():
    items = [Item(str(i), ["a", "b"], 0) for i in range(100)]
    first, again, other = subsample(items, 10, 1), subsample(items, 10, 1), subsample(items, 10, 2)
    assert first == again != other and len(first) == 10
    assert [int(i.context) for i in first] == sorted(int(i.context) for i in first)
    assert subsample(items, 0, 1) == items


@pytest.mark.slow
def test_untrained_model_is_at_chance_on_real_hellaswag(shared_data):
    from tinylm.config import load_preset
    from tinylm.model import GPT
    from tinylm.tokenizers import GPT2Tokenizer

    cfg = load_preset("tiny-test")
    cfg.model.vocab_size = 50257
    torch.manual_seed(0)
    items = subsample(read_items(shared_data / "hellaswag" / "hellaswag_val.jsonl", "hellaswag"), 600, 0)
    result = score_items(GPT(cfg.model), GPT2Tokenizer(), items, "hellaswag", batch_size=64)
    assert abs(result.accuracy - 0.25) < 0.06 and abs(result.accuracy_norm - 0.25) < 0.06


def test_trainer_logs_hellaswag_at_each_validation(tmp_path, corpus_file):
    from conftest import tiny_config
    from tinylm.training import train

    cfg = tiny_config(tmp_path / "run", corpus_file, max_steps=20, eval_interval=10)
    cfg.train.hellaswag_items = 2
    cfg.train.hellaswag_file = write_jsonl(tmp_path / "hs.jsonl", ITEMS)
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in scored] == [10, 20]
    assert all(r["hellaswag_acc_norm"] in (0.0, 0.5, 1.0) and "hellaswag_acc" in r for r in scored)

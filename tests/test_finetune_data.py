"""Fine-tuning data: records, the response mask, token offsets, chat_template parity, batches, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinylm.chat.encode import encode_messages
from tinylm.chat.templates import get_template, instruction_messages
from tinylm.data.examples import IGNORE, ExampleBatches, FitCounts, fit_example, load_examples, make_examples, pad_batch
from tinylm.data.records import detect_format, read_conversations, read_records, shakespeare_instructions
from tinylm.errors import DataError
from tinylm.interop.hf_tokenizer import export_tokenizer
from tinylm.tokenizers import BPETokenizer, CharTokenizer, GPT2Tokenizer, WordTokenizer

CORPUS = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
          "The slings and arrows of outrageous fortune. Blue! Hi 42 <|user|> ### Response: System User Assistant\n") * 3
TOKENIZERS = {
    "char": CharTokenizer.train([CORPUS + "éü你"]),
    "word": WordTokenizer.train([CORPUS], vocab_size=60),
    "gpt2": GPT2Tokenizer(),
    "bpe": BPETokenizer.train([CORPUS], vocab_size=300),
}
GPT2 = TOKENIZERS["gpt2"]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the response mask


def test_the_ignore_mask_covers_exactly_the_prompt_tokens_of_a_rendered_example():
    template = get_template("alpaca")
    messages = instruction_messages({"instruction": "Name a colour.", "output": "Blue is a colour."})
    ids, mask = encode_messages(GPT2, template, messages)
    prompt = template.text(messages[:2], eot_text="", add_generation_prompt=True)
    assert prompt.endswith("### Response:\n")
    reply, end = GPT2.encode("Blue is a colour."), GPT2.encode("\n\n")
    assert ids == GPT2.encode(prompt) + reply + [GPT2.eot_id] + end
    assert mask == [False] * len(GPT2.encode(prompt)) + [True] * (len(reply) + 1) + [False] * len(end)
    [example], counts = make_examples([("x", messages)], GPT2, template, max_len=1000)
    assert counts.kept == 1 and counts.truncated == 0
    trained = [int(t) for t in example.labels if t != IGNORE]
    assert trained == reply + [GPT2.eot_id] and GPT2.decode(trained[:-1]) == "Blue is a colour."
    [everything], _ = make_examples([("x", messages)], GPT2, template, max_len=1000, train_on_prompt=True)
    assert everything.labels.tolist() == ids


def test_every_reply_of_a_chat_is_trained_and_a_token_across_the_boundary_counts_as_reply():
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Farewell."}]
    ids, mask = encode_messages(GPT2, get_template("chat"), chat)
    trained = [i for i, m in zip(ids, mask, strict=True) if m]
    assert trained == GPT2.encode("Hello.") + [GPT2.eot_id] + GPT2.encode("Farewell.") + [GPT2.eot_id]
    # "Assistant: " ends in a space that GPT-2 joins to the reply's first word: that token is the reply's
    ids, mask = encode_messages(GPT2, get_template("plain"), chat[1:3])
    assert [GPT2.decode([i]) for i, m in zip(ids, mask, strict=True) if m] == [" Hello", ".", "<|endoftext|>"]


def test_without_an_end_of_text_token_the_turns_line_break_ends_the_reply():
    char = TOKENIZERS["char"]
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Blue!"}]
    ids, mask = encode_messages(char, get_template("plain"), chat)
    assert char.decode(ids) == "User: Hi\nAssistant: Blue!\n"
    assert char.decode([i for i, m in zip(ids, mask, strict=True) if m]) == "Blue!\n"
    # a training example also learns the next turn's marker, which generation stops at
    [example], _ = make_examples([("x", chat)], char, get_template("plain"), max_len=100)
    assert char.decode([int(t) for t in example.labels if t != IGNORE]) == "Blue!\nUser:"


PIECES = list("ab xyTo,.!?\n\t'é你🎉<|>#-") + ["  ", "\n\n", "be", "the"]
TEXT = st.lists(st.sampled_from(PIECES), max_size=25).map("".join)


@pytest.mark.parametrize("kind", TOKENIZERS)
@settings(max_examples=60, deadline=None)
@given(text=TEXT)
def test_encode_offsets_gives_the_ids_of_encode_and_where_each_token_ends(kind, text):
    tok = TOKENIZERS[kind]
    ids, ends = tok.encode_offsets(text)
    assert ids == tok.encode(text) and len(ends) == len(ids)
    assert all(0 < a <= b <= len(text) for a, b in zip(ends, ends[1:], strict=False))
    if kind != "word" and ids:  # word drops whitespace, the byte-level and char tokenizers cover every character
        assert ends[-1] == len(text)


# --------------------------------------------------------------------------- parity with apply_chat_template


@pytest.fixture(scope="module")
def hf_tokenizers(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    out = {}
    for kind, template in (("char", "plain"), ("word", "chat"), ("gpt2", "alpaca"), ("bpe", "chat")):
        folder = tmp_path_factory.mktemp(kind)
        export_tokenizer(TOKENIZERS[kind], folder, chat_template=get_template(template))
        out[kind] = (transformers.AutoTokenizer.from_pretrained(str(folder)), get_template(template))
    return out


CONTENT = st.lists(st.sampled_from(list("ab xyTo,.!?\n'é<|>") + ["  ", "\n\n", "be", "the"]), max_size=15).map("".join)
TURNS = st.lists(st.tuples(st.sampled_from(["user", "assistant"]), CONTENT), min_size=1, max_size=4)


@pytest.mark.parametrize("kind", TOKENIZERS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=TURNS, system=st.one_of(st.none(), CONTENT), generation=st.booleans())
def test_apply_chat_template_of_the_export_gives_tinylms_ids(hf_tokenizers, kind, turns, system, generation):
    hf, template = hf_tokenizers[kind]
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": r, "content": c} for r, c in turns]
    theirs = hf.apply_chat_template(messages, add_generation_prompt=generation, tokenize=True)
    theirs = theirs["input_ids"] if hasattr(theirs, "keys") else theirs
    ours, _ = encode_messages(TOKENIZERS[kind], template, messages, add_generation_prompt=generation)
    assert theirs == ours


@pytest.fixture(scope="module")
def hf_kind_tokenizers(tmp_path_factory):
    """The hf kind (any tokenizer.json): a Llama-2-style SentencePiece BPE that adds <s> to every input, and a
    GPT-2-style byte-level BPE; each exported with a chat template and loaded by transformers."""
    transformers = pytest.importorskip("transformers")
    from hf_models import byte_level_bpe, sentencepiece
    from tinylm.tokenizers import train_tokenizer

    out = {}
    for name, build in (("sentencepiece", sentencepiece), ("byte_level", byte_level_bpe)):
        ours = train_tokenizer(f"hf:{build(tmp_path_factory.mktemp(name) / 'tok')}", [])
        folder = tmp_path_factory.mktemp(name + "-export")
        export_tokenizer(ours, folder, chat_template=get_template("chat"))
        out[name] = (ours, transformers.AutoTokenizer.from_pretrained(str(folder)))
    return out


@pytest.mark.parametrize("name", ["sentencepiece", "byte_level"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=TURNS, generation=st.booleans())
def test_apply_chat_template_gives_tinylms_ids_for_hugging_face_tokenizers(hf_kind_tokenizers, name, turns,
                                                                          generation):
    ours, theirs = hf_kind_tokenizers[name]
    messages = [{"role": r, "content": c} for r, c in turns]
    expected = theirs.apply_chat_template(messages, add_generation_prompt=generation, tokenize=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    ids, mask = encode_messages(ours, get_template("chat"), messages, add_generation_prompt=generation)
    assert ids == expected
    assert (ids[0] == ours.bos_id and not mask[0]) == (name == "sentencepiece")  # Llama's <s> opens every input


# --------------------------------------------------------------------------- records and bad input


def test_formats_are_detected_and_json_arrays_carry_line_numbers(tmp_path):
    records = shakespeare_instructions(limit=3)
    assert records[0] == {"instruction": "Who says: In delivering my son from me, I bury a second husband.",
                          "output": "Countess"}
    array = tmp_path / "a.json"
    array.write_text(json.dumps(records, indent=1), encoding="utf-8")
    assert detect_format(str(array)) == "instruction"
    assert [where for where, _ in read_conversations(str(array), "instruction")] == [
        f"{array} line {n}" for n in (2, 6, 10)]
    chats = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "a"},
                                                             {"role": "assistant", "content": "b"}]}])
    assert detect_format(str(chats)) == "chat"
    assert detect_format(str(write_jsonl(tmp_path / "t.jsonl", [{"text": "plain"}]))) == "text"
    assert detect_format("shakespeare") == "text"


@pytest.mark.parametrize("records, fmt, fragment", [
    ([{"instruction": "a", "output": "b"}, {"instruction": "c"}], "instruction",
     r"x.jsonl line 2: an instruction record needs \"instruction\" and \"output\""),
    ([{"prompt": "a"}], None, r"x.jsonl line 1: a fine-tuning record needs \"messages\""),
    ([{"messages": [{"role": "robot", "content": "x"}]}], "chat",
     r"x.jsonl line 1: messages\[0\]: unknown role 'robot'; use system, user or assistant"),
    ([{"messages": [{"role": "user", "content": "x"}]}], "chat", "line 1: the conversation has no assistant message"),
    ([], None, "is empty"),
])
def test_bad_records_are_one_line_errors_naming_file_and_line(tmp_path, records, fmt, fragment):
    path = write_jsonl(tmp_path / "x.jsonl", records)
    with pytest.raises(DataError, match=fragment) as error:
        read_conversations(str(path), fmt) if fmt else detect_format(str(path))
    assert "\n" not in str(error.value)


def test_broken_json_arrays_and_empty_files_are_named(tmp_path):
    bad = tmp_path / "b.json"
    bad.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c", "output": }\n]')
    with pytest.raises(DataError, match="b.json line 3 is not valid JSON"):
        read_conversations(str(bad), "instruction")
    empty = tmp_path / "e.json"
    empty.write_text("  \n")
    with pytest.raises(DataError, match="e.json is empty"):
        detect_format(str(empty))
    with pytest.raises(DataError, match="no such file"):
        detect_format(str(tmp_path / "missing.jsonl"))


def test_long_examples_are_cut_from_the_prompt_side_or_dropped_and_counted():
    counts = FitCounts()
    ids, mask = list(range(10)), [False] * 6 + [True] * 4
    assert fit_example(ids, mask, 10, counts) == (ids, mask)
    assert fit_example(ids, mask, 6, counts) == (ids[-6:], mask[-6:])  # 4 reply tokens + 2 of the prompt
    assert fit_example(ids, mask, 5, counts) == (ids[-5:], mask[-5:])  # the reply and one token before it
    assert fit_example(ids, mask, 4, counts) is None
    assert (counts.kept, counts.truncated, counts.dropped) == (3, 2, 1)
    assert "2 longer than the window of 5 tokens cut from the prompt side" in counts.report("train", 5)


def test_load_examples_splits_and_reports(tmp_path, capsys):
    path = write_jsonl(tmp_path / "i.jsonl", shakespeare_instructions(limit=40))
    data = load_examples(str(path), "instruction", GPT2, get_template("alpaca"), window=40, seed=3)
    assert (len(data.train), len(data.val)) == (36, 4)
    assert "cut from the prompt side" in capsys.readouterr().err
    again = load_examples(str(path), "instruction", GPT2, get_template("alpaca"), window=40, seed=3, quiet=True)
    assert all((a.ids == b.ids).all() for a, b in zip(data.val, again.val, strict=True))
    with pytest.raises(DataError, match="no training example fits the window of 1 tokens"):
        load_examples(str(path), "instruction", GPT2, get_template("alpaca"), window=1, quiet=True)


def test_example_batches_pad_with_ignored_targets_and_resume_exactly():
    examples, _ = make_examples([(str(i), [{"role": "user", "content": "x" * i}, {"role": "assistant",
                                           "content": "y" * (i % 3 + 1)}]) for i in range(1, 8)],
                                TOKENIZERS["char"], get_template("plain"), max_len=100)
    x, y = pad_batch(examples[:2])
    assert x.shape == y.shape == (2, len(examples[1]) - 1)
    assert (y[0, len(examples[0]) - 1:] == IGNORE).all()
    one = ExampleBatches(examples, 4, seed=5)
    halves = [ExampleBatches(examples, 2, seed=5, shard=(r, 2)) for r in range(2)]
    for _ in range(3):  # 12 examples: runs into the next epoch
        whole = one.next_batch()[0]
        parts = [h.next_batch()[0] for h in halves]
        assert torch.equal(whole[:2, :parts[0].shape[1]], parts[0]) and torch.equal(whole[2:, :parts[1].shape[1]],
                                                                                     parts[1])
    assert one.epoch > 1 and one.take_tokens() == halves[0].take_tokens() > 0
    resumed = ExampleBatches(examples, 4, seed=5)
    resumed.load_state_dict(one.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(one.next_batch(), resumed.next_batch(), strict=True))


def test_byte_order_marks_and_invalid_utf8_in_record_files(tmp_path):
    """Windows editors start files with a UTF-8 byte order mark: it is not part of the first record
    (JSONL, JSON arrays, and text sources alike). Invalid UTF-8 is an error naming the byte, or U+FFFD
    with errors="replace" (`tinylm finetune --errors replace`)."""
    from tinylm.data.spec import read_source

    record = {"instruction": "Who speaks?", "output": "Hamlet."}
    bom = b"\xef\xbb\xbf"
    (tmp_path / "a.jsonl").write_bytes(bom + json.dumps(record).encode() + b"\r\n")
    (tmp_path / "a.json").write_bytes(bom + json.dumps([record]).encode())
    (tmp_path / "t.txt").write_bytes(bom + b"To be, or not to be.\n")
    for name in ("a.jsonl", "a.json"):
        assert detect_format(str(tmp_path / name)) == "instruction"
        assert [r for _, r in read_records(str(tmp_path / name))] == [record]
    assert "".join(text for text, _ in read_source(str(tmp_path / "t.txt")).streams["all"]()) == \
        "To be, or not to be.\n"
    latin1 = json.dumps({"instruction": "caf\u00e9?", "output": "oui"}).encode().replace(b"\\u00e9", b"\xe9")
    (tmp_path / "b.jsonl").write_bytes(latin1 + b"\n")
    with pytest.raises(DataError, match=r"b.jsonl is not valid UTF-8 \(byte offset 20.*--errors replace"):
        list(read_records(str(tmp_path / "b.jsonl")))
    assert [r["instruction"] for _, r in read_records(str(tmp_path / "b.jsonl"), "replace")] == ["caf\ufffd?"]

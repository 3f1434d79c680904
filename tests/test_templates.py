"""Prompt templates: rendering, message checks, and the exported Jinja chat_template rendered by transformers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinylm.chat.templates import TEMPLATES, check_messages, get_template, instruction_messages, unknown_marker_count
from tinylm.errors import ConfigError, DataError


def _hf_tokenizer(template: str):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1}, "<unk>")),
                                  eos_token="<eos>", unk_token="<unk>")
    tok.chat_template = template
    return tok


def test_alpaca_renders_the_published_format():
    record = {"instruction": "Name a colour.", "input": "Think of the sky.", "output": "Blue."}
    text = get_template("alpaca").text(instruction_messages(record), eot_text="<eos>")
    assert text == ("Below is an instruction that describes a task, paired with an input that provides further "
                    "context. Write a response that appropriately completes the request.\n\n"
                    "### Instruction:\nName a colour.\n\n### Input:\nThink of the sky.\n\n"
                    "### Response:\nBlue.<eos>\n\n")
    prompt = get_template("alpaca").text(instruction_messages({"instruction": "Hi"}), "<eos>", True)
    assert prompt.endswith("### Instruction:\nHi\n\n### Response:\n")


def test_only_the_reply_and_its_end_are_response_pieces():
    pieces = get_template("chat").render([{"role": "user", "content": "hello"},
                                          {"role": "assistant", "content": "hi there"}])
    assert [p.text for p in pieces if p.response] == ["hi there", ""]
    assert [p.eot for p in pieces if p.response] == [False, True]
    assert "".join(p.text for p in pieces if not p.response) == "<|user|>\nhello\n<|assistant|>\n\n"


text_st = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
message_st = st.lists(st.tuples(st.sampled_from(["user", "assistant"]), text_st), min_size=1, max_size=4)


@settings(max_examples=40, deadline=None)
@given(turns=message_st, system=st.one_of(st.none(), text_st), gen=st.booleans(),
       name=st.sampled_from(sorted(TEMPLATES)))
def test_jinja_chat_template_renders_the_same_text_in_transformers(turns, system, gen, name):
    template = get_template(name)
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": r, "content": c} for r, c in turns]
    hf = _hf_tokenizer(template.jinja()).apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    assert hf == template.text(messages, eot_text="<eos>", add_generation_prompt=gen)


@pytest.mark.parametrize("messages, fragment", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([{"role": "user"}], "needs \"role\" and \"content\""),
    ([{"role": "robot", "content": "x"}], "unknown role 'robot'"),
    ([{"role": "user", "content": 3}], "content must be a string"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "only come first"),
])
def test_bad_messages_are_one_line_errors(messages, fragment):
    with pytest.raises(DataError, match=fragment) as e:
        check_messages(messages, where="line 3")
    assert str(e.value).startswith("line 3") and "\n" not in str(e.value)


def test_bad_instruction_records_and_template_names():
    with pytest.raises(DataError, match="needs an \"instruction\""):
        instruction_messages({"output": "x"}, where="data.jsonl line 2")
    with pytest.raises(ConfigError, match="choose one of alpaca, chat, plain"):
        get_template("zephyr")


def test_reply_stops_cut_the_end_of_a_reply_whole_without_an_end_of_text_token():
    plain = get_template("plain")
    assert plain.reply_stops(has_eot=True) == ["User:", "System:"]
    assert plain.reply_stops(has_eot=False) == ["\nUser:", "\nSystem:", "User:", "System:"]
    from tinylm.generation import cut_at_stop

    assert cut_at_stop("Cleopatra\nUser: who", plain.reply_stops(has_eot=False)) == "Cleopatra"


def test_markers_outside_the_vocabulary_are_counted_and_a_chat_warns(trained_run, capsys):
    """The chat template's `<|...|>` markers are not in a char vocabulary built from plain prose: they
    would become <unk>. `tinylm sample --chat --template chat` says so (and still answers); plain fits."""
    from tinylm.cli import main
    from tinylm.tokenizers import load_tokenizer, train_tokenizer

    prose = load_tokenizer(trained_run)
    assert unknown_marker_count(get_template("chat"), prose) > 0
    assert unknown_marker_count(get_template("plain"), prose) == 0
    assert unknown_marker_count(get_template("chat"), train_tokenizer("gpt2", [])) == 0  # byte-level: none
    argv = ["sample", str(trained_run), "--chat", "--prompt", "Hi", "--max-new-tokens", "4", "--dtype", "float32"]
    assert main([*argv, "--template", "chat"]) == 0
    err = capsys.readouterr().err
    assert "'chat' template's markers use characters this model's char tokenizer does not have" in err
    assert main([*argv, "--template", "plain"]) == 0
    assert "markers" not in capsys.readouterr().err
    assert main(argv) == 1  # no template of its own, none given: the CLI flag is named
    assert "tinylm sample --template chat|alpaca|plain" in capsys.readouterr().err

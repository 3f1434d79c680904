"""JSON and TOML booleans are no integers (issue 27, item 7), and strings are no booleans: every
integer read from a user's file (multiple-choice labels, a Hugging Face config.json or
generation_config.json, request bodies, TOML configs, a run's config.json) refuses `true` in one
line naming the file and the field, as the config fields do. Python's `isinstance(True, int)`
is the trap each reader had to avoid."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinylm.cli import main
from tinylm.errors import ConfigError, DataError, TokenizerError
from tinylm.evaluation.multiple_choice import read_items
from tinylm.config.fields import Fields, boolean, integer, number


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the readers


@given(st.one_of(st.booleans(), st.text(max_size=5), st.floats(allow_nan=False, allow_infinity=False),
                 st.integers(min_value=2**63), st.integers(max_value=-(2**63) - 1), st.none(),
                 st.lists(st.integers(), max_size=2)))
def test_integer_refuses_everything_but_an_int64(value):
    with pytest.raises(DataError, match=r"^f\.jsonl line 3: 'label' must be an integer"):
        integer(value, "f.jsonl line 3: 'label'")


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_integer_keeps_every_int64(value):
    assert integer(value, "x") == value


@given(st.one_of(st.integers(), st.floats(), st.booleans(), st.text(max_size=3), st.none()))
def test_number_and_boolean_take_their_own_type_only(value):
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool) and abs(float(value)) < float("inf")
    if numeric:
        assert number(value, "x") == float(value)
    else:
        with pytest.raises(DataError, match="^x must be a finite number, got "):
            number(value, "x")
    if isinstance(value, bool):
        assert boolean(value, "x") is value
    else:
        with pytest.raises(DataError, match="^x must be true or false, got "):
            boolean(value, "x")


def test_fields_name_the_file_and_key_and_keep_defaults():
    f = Fields({"n_layer": True, "n_head": 4, "eps": None, "tie": "false"}, "m/config.json")
    assert f.int("n_head") == 4 and f.float("eps", 1e-5) == 1e-5 and f.int("absent", 7) == 7
    with pytest.raises(ConfigError, match=r"^m/config\.json: n_layer must be an integer, got true$"):
        f.int("n_layer")
    with pytest.raises(ConfigError, match=r'^m/config\.json: tie must be true or false, got "false"$'):
        f.bool("tie")
    with pytest.raises(ConfigError, match=r"^m/config\.json: d_model is missing$"):
        f.int("d_model")


# --------------------------------------------------------------------------- multiple-choice files, end to end


@pytest.mark.parametrize("kind, record", [
    ("choices", {"context": "x", "choices": ["a", "b"], "label": True}),  # the report: scored as label 1
    ("choices", {"context": "x", "choices": ["a", "b"], "label": False}),
    ("hellaswag", {"ctx": "x", "endings": ["a", "b"], "label": True}),
    ("choices", {"context": "x", "choices": ["a", "b"], "label": 1.0}),
    ("choices", {"context": "x", "choices": ["a", "b"], "label": "1"}),  # only HellaSwag's files write "1"
])
def test_a_boolean_label_is_refused_naming_file_line_and_field(tmp_path, kind, record):
    path = _jsonl(tmp_path / "f.jsonl", [{"context": "y", "ctx": "y", "choices": ["a", "b"], "endings": ["a", "b"],
                                           "label": 0}, record])
    shown = json.dumps(record["label"])
    with pytest.raises(DataError, match=rf"^{path} line 2: 'label' must be an integer \(the 0-based index of the "
                                        rf"correct choice\), got {shown}$"):
        read_items(path, kind)


def test_the_reported_choices_file_is_one_error_line_and_the_fixed_file_scores(tmp_path, trained_run, capsys):
    bad = _jsonl(tmp_path / "f.jsonl", [{"context": "x", "choices": ["a", "b"], "label": True}])
    assert main(["eval", str(trained_run), "--choices", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "'label' must be an integer" in err and "got true" in err
    assert len(err.splitlines()) == 1
    fixed = _jsonl(tmp_path / "g.jsonl", [{"context": "x", "choices": ["a", "b"], "label": 1}])
    assert main(["eval", str(trained_run), "--choices", str(fixed), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 1
    # HellaSwag's own files write labels as strings of digits: still read
    assert read_items(_jsonl(tmp_path / "h.jsonl", [{"ctx": "x", "endings": ["a", "b"], "label": "1"}]),
                      "hellaswag")[0].label == 1


# --------------------------------------------------------------------------- Hugging Face files


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_run) -> Path:
    from tinylm.interop import export_hf

    out = tmp_path_factory.mktemp("hf") / "model"
    export_hf(trained_run, out)
    return out


@pytest.mark.parametrize("key, value, fragment", [
    ("n_layer", True, "n_layer must be an integer, got true"),
    ("n_embd", 64.5, "n_embd must be an integer, got 64.5"),
    ("n_head", "4", 'n_head must be an integer, got "4"'),
    ("layer_norm_epsilon", True, "layer_norm_epsilon must be a finite number, got true"),
    ("tie_word_embeddings", "false", 'tie_word_embeddings must be true or false, got "false"'),
])
def test_import_refuses_wrongly_typed_config_fields(tmp_path, exported, capsys, key, value, fragment):
    src = tmp_path / "src"
    shutil.copytree(exported, src)
    config = json.loads((src / "config.json").read_text())
    config[key] = value
    (src / "config.json").write_text(json.dumps(config))
    assert main(["import", str(src), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and fragment in err and "config.json" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "config.json").exists()


def test_llama_config_fields_refuse_booleans():
    from tinylm.interop.llama import model_config_from_llama

    config = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
              "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 64}
    assert model_config_from_llama(config).n_layer == 2
    for key, value in (("num_hidden_layers", True), ("num_key_value_heads", True), ("rope_theta", True),
                       ("attention_bias", 1), ("max_position_embeddings", "64")):
        with pytest.raises(ConfigError, match=f"^config.json: {key} must be "):
            model_config_from_llama({**config, key: value})


@pytest.mark.parametrize("eos", [True, [2, True], "2"])
def test_generation_config_eos_ids_refuse_booleans(tmp_path, eos):
    from tinylm.tokenizers.hf import HFTokenizer

    tokenizer = {"version": "1.0", "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "<eos>": 2},
                                             "unk_token": "a"}, "pre_tokenizer": {"type": "Whitespace"}}
    files = {"tokenizer.json": json.dumps(tokenizer)}
    assert HFTokenizer({**files, "generation_config.json": json.dumps({"eos_token_id": [2]})}).eot_id == 2
    with pytest.raises(TokenizerError, match="generation_config.json eos_token_id must be an integer"):
        HFTokenizer({**files, "generation_config.json": json.dumps({"eos_token_id": eos})})


# --------------------------------------------------------------------------- fine-tuning records


def test_an_alpaca_input_that_is_not_text_is_refused():
    from tinylm.chat.templates import instruction_messages

    assert len(instruction_messages({"instruction": "a", "input": None, "output": "b"})) == 3
    for value in (False, 0, ["x"]):
        with pytest.raises(DataError, match=r'^r: "input" must be a string'):
            instruction_messages({"instruction": "a", "input": value, "output": "b"}, "r")


# --------------------------------------------------------------------------- TOML configs and a run's config.json


def test_toml_config_and_run_config_refuse_booleans_for_integers(tmp_path, trained_run, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text("[train]\nmax_steps = true\n")
    assert main(["train", "--preset", "tiny-test", "--config", str(toml), "--out", str(tmp_path / "r")]) == 1
    assert "train.max_steps expects int, got True" in capsys.readouterr().err
    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["n_layer"] = True
    (run / "config.json").write_text(json.dumps(config))
    assert main(["sample", str(run), "--max-new-tokens", "2"]) == 1
    assert "model.n_layer expects int, got True" in capsys.readouterr().err


# --------------------------------------------------------------------------- request bodies


INT_FIELDS = {"completions": ["max_tokens", "n", "seed", "top_k", "logprobs", "best_of"],
              "chat": ["max_tokens", "max_completion_tokens", "n", "seed", "top_k", "top_logprobs"]}


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(endpoint=st.sampled_from(sorted(INT_FIELDS)), data=st.data(), value=st.booleans())
def test_request_bodies_refuse_booleans_for_every_integer(endpoint, data, value):
    from tinylm.serving.protocol import APIError, Limits, chat_request, completion_request

    key = data.draw(st.sampled_from(INT_FIELDS[endpoint]))
    body = {"model": "m", key: value}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": "hi"}]
        if key == "top_logprobs":
            body["logprobs"] = True
        read = chat_request
    else:
        body["prompt"] = "hi"
        read = completion_request
    with pytest.raises(APIError) as e:
        read(body, Limits(vocab_size=50))
    assert e.value.status == 400 and e.value.param == key


@given(st.lists(st.booleans(), min_size=1, max_size=3))
def test_token_id_prompts_refuse_booleans(ids):
    from tinylm.serving.protocol import APIError, Limits, completion_request

    with pytest.raises(APIError) as e:
        completion_request({"model": "m", "prompt": ids}, Limits(vocab_size=50))
    assert e.value.status == 400 and e.value.param == "prompt"

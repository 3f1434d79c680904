"""Every path a run, a data directory, an evaluation or an export records is absolute, so each command
that reads it later works from any working directory (issue 27, item 1); runs that older versions wrote
with relative paths are read from the directory they were trained in."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinylm
from tinylm.cli import main
from tinylm.config import PATH_FIELDS, SOURCE_FIELDS, RunConfig, absolute_paths
from tinylm.run import read_config
from tinylm.run.layout import working_dir_of

TRAIN = ["--preset", "tiny-test", "--max-steps", "6", "--set", "train.eval_interval=3"]


def recorded(run: Path, key: str) -> str:
    section, name = key.split(".")
    return json.loads((run / "config.json").read_text())[section][name]


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture
def here(tmp_path: Path, monkeypatch, corpus_text: str) -> Path:
    """A working directory holding s.txt (real Shakespeare), the current one for the test."""
    (tmp_path / "s.txt").write_text(corpus_text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_issues_example_evaluates_and_resumes_from_another_directory(here, monkeypatch, capsys) -> None:
    assert main(["train", *TRAIN, "--text", "s.txt", "--out", "R"]) == 0
    assert recorded(here / "R", "data.source") == str(here / "s.txt")
    assert recorded(here / "R", "train.out_dir") == str(here / "R")
    assert main(["eval", "R", "--json"]) == 0
    where_trained = last_json(capsys)
    (here / "o").mkdir()
    monkeypatch.chdir(here / "o")
    assert main(["eval", "../R", "--json"]) == 0
    elsewhere = last_json(capsys)
    assert elsewhere["loss"] == where_trained["loss"] and elsewhere["tokens"] == where_trained["tokens"]
    evals = [json.loads(line) for line in (here / "R" / "evals.jsonl").read_text().splitlines()]
    assert all(os.path.isabs(e["data"]) and Path(e["data"]).is_dir() for e in evals)
    assert main(["train", "--resume", "../R", "--max-steps", "8"]) == 0
    assert read_config(here / "R").train.max_steps == 8
    assert recorded(here / "R", "train.out_dir") == str(here / "R")  # not "../R"
    assert main(["eval", "../R", "--text", "../s.txt", "--json"]) == 0
    assert json.loads((here / "R" / "evals.jsonl").read_text().splitlines()[-1])["data"] == str(here / "s.txt")


def test_a_run_older_versions_recorded_with_relative_paths_is_read_from_where_it_was_trained(
        here, monkeypatch, capsys) -> None:
    assert main(["train", *TRAIN, "--text", "s.txt", "--out", "runs/old"]) == 0
    run = here / "runs" / "old"
    assert main(["eval", str(run), "--json"]) == 0
    expected = last_json(capsys)["loss"]
    config = json.loads((run / "config.json").read_text())
    config["data"]["source"], config["train"]["out_dir"] = "s.txt", "runs/old"  # as typed, as they used to be
    (run / "config.json").write_text(json.dumps(config))
    (here / "elsewhere").mkdir()
    monkeypatch.chdir(here / "elsewhere")
    assert read_config("../runs/old").data.source == str(here / "s.txt")
    assert main(["eval", "../runs/old", "--json"]) == 0
    assert last_json(capsys)["loss"] == expected
    # moved away from the directory its out_dir names: the relative source cannot be found, and the error says
    # what the run recorded and what to give instead
    shutil.move(str(run), str(here / "elsewhere" / "moved"))
    assert main(["eval", "moved"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: moved's training data (data.source s.txt in its config.json) cannot be read") \
        and "--text FILE" in err and "\n" not in err


def test_every_path_field_a_run_records_is_absolute(here, monkeypatch) -> None:
    assert main(["prepare", "s.txt", "--out", "D"]) == 0
    (here / "h.jsonl").write_text(json.dumps({"ctx": "To be", "endings": ["or not", "the", "mind", "is"],
                                              "label": 0}) + "\n")
    (here / "raw").mkdir()
    assert main(["train", *TRAIN, "--data", "D", "--out", "runs/a", "--set", "train.hellaswag_items=1",
                 "--set", "train.hellaswag_file=h.jsonl", "--set", "data.source_dir=raw"]) == 0
    run = here / "runs" / "a"
    values = {key: recorded(run, key) for key in (*PATH_FIELDS, *SOURCE_FIELDS)}
    assert values["data.dir"] == str(here / "D") and values["train.hellaswag_file"] == str(here / "h.jsonl")
    assert values["data.source_dir"] == str(here / "raw") and values["train.out_dir"] == str(run)
    assert all(os.path.isabs(v) for v in values.values() if v), values
    monkeypatch.chdir(here / "raw")
    assert main(["train", "--resume", "../runs/a", "--max-steps", "7"]) == 0  # the data dir and HellaSwag file


def test_names_stay_names_and_paths_become_absolute_from_where_they_were_given(tmp_path) -> None:
    (tmp_path / "shakespeare").mkdir()  # a folder named like the bundled corpus: read_source reads the folder
    cfg = RunConfig()
    cfg.data.source, cfg.data.tokenizer = "tinystories", "hf:tok"
    cfg.finetune.val_data = "hf:owner/name"
    absolute_paths(cfg, tmp_path)
    assert (cfg.data.source, cfg.data.tokenizer, cfg.finetune.val_data) == ("tinystories", "hf:tok", "hf:owner/name")
    (tmp_path / "tok").mkdir()
    cfg.data.source = "shakespeare"
    absolute_paths(cfg, tmp_path)
    assert cfg.data.source == str(tmp_path / "shakespeare") and cfg.data.tokenizer == f"hf:{tmp_path / 'tok'}"
    assert absolute_paths(RunConfig(), tmp_path / "tok").data.source == "shakespeare"  # the bundled corpus


segment = st.text(st.sampled_from("abcxyz019 ._-é"), min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))


@settings(max_examples=200, deadline=None)
@given(origin=st.lists(segment, min_size=1, max_size=4), out=st.lists(segment, min_size=1, max_size=3),
       data=st.lists(segment, min_size=1, max_size=3), up=st.integers(0, 2))
def test_relative_paths_are_read_from_the_directory_they_were_recorded_in(origin, out, data, up) -> None:
    """A config written in ORIGIN with out_dir OUT (relative) and data.dir DATA: read back from any working
    directory, OUT leads back to ORIGIN and DATA to ORIGIN/DATA (with `up` leading '..' components too)."""
    base = Path("/", *origin)
    cfg = RunConfig()
    cfg.train.out_dir = os.path.join(*out)
    cfg.data.dir = os.path.join(*([".."] * up), *data)
    run_dir = base / cfg.train.out_dir
    assert working_dir_of(run_dir, cfg.train.out_dir) == base
    absolute_paths(cfg, working_dir_of(run_dir, cfg.train.out_dir))
    assert cfg.train.out_dir == str(run_dir) and cfg.data.dir == os.path.normpath(os.path.join(base, *[".."] * up,
                                                                                                  *data))
    assert working_dir_of(base / "moved", os.path.join(*out, "x")) is None  # a moved run cannot tell


@pytest.mark.slow
def test_a_fine_tune_records_its_base_and_data_absolute(here, trained_run, monkeypatch, capsys) -> None:
    from tinylm.data.records import shakespeare_instructions

    shutil.copytree(trained_run, here / "base")
    records = shakespeare_instructions(limit=60)
    (here / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:48]))
    (here / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[48:]))
    assert main(["finetune", "base", "--data", "train.jsonl", "--val-data", "val.jsonl", "--out", "ft",
                 "--max-steps", "4", "--set", "train.eval_interval=2"]) == 0
    cfg = read_config(here / "ft")
    assert (cfg.finetune.base, cfg.data.source, cfg.finetune.val_data) == (
        str(here / "base"), str(here / "train.jsonl"), str(here / "val.jsonl"))
    assert main(["eval", "ft", "--json"]) == 0
    expected = last_json(capsys)["loss"]
    (here / "o").mkdir()
    monkeypatch.chdir(here / "o")
    assert main(["eval", "../ft", "--json"]) == 0  # the validation examples, read from the recorded file
    assert last_json(capsys)["loss"] == expected
    assert main(["finetune", "--resume", "../ft", "--max-steps", "6"]) == 0
    assert main(["merge", "../ft", "--out", "merged"]) == 0
    merged = read_config(here / "o" / "merged")
    assert merged.train.out_dir == str(here / "o" / "merged") and str(here / "ft") in merged.description
    assert main(["export", "../ft", "--format", "peft", "--base-model", "../base", "--out", "peft"]) == 0
    adapter = json.loads((here / "o" / "peft" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(here / "base")
    assert tinylm.load("../ft", device="cpu").generate("To be", max_new_tokens=2, seed=0) is not None


@pytest.mark.slow
def test_an_hf_tokenizer_and_an_import_are_recorded_absolute(here, monkeypatch) -> None:
    pytest.importorskip("transformers")
    from safetensors import safe_open

    from hf_models import byte_level_bpe, save_llama

    byte_level_bpe(here / "tok", vocab_size=300)
    assert main(["prepare", "s.txt", "--tokenizer", "hf:tok", "--out", "D"]) == 0
    assert json.loads((here / "D" / "meta.json").read_text())["tokenizer"]["spec"] == f"hf:{here / 'tok'}"
    save_llama(here / "llama", here / "tok", vocab_size=300)
    assert main(["import", "llama", "--out", "I"]) == 0
    cfg = read_config(here / "I")
    assert cfg.data.tokenizer == f"hf:{here / 'llama'}" and cfg.train.out_dir == str(here / "I")
    assert cfg.description == f"imported from {here / 'llama'}"
    with safe_open(str(here / "I" / "model.safetensors"), "pt") as f:
        assert f.metadata()["imported_from"] == str(here / "llama")


def _set_recorded(run: Path, **values: str) -> None:
    """Follow the error's fix: set fields ("data__source") in the run's config.json to their new places."""
    config = json.loads((run / "config.json").read_text())
    for key, value in values.items():
        section, name = key.split("__")
        config[section][name] = value
    (run / "config.json").write_text(json.dumps(config, indent=2))


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def test_a_run_moved_with_its_data_names_the_field_to_set_and_setting_it_resumes(here, monkeypatch, capsys):
    """A run and its source moved together: the resume named the old file and no fix (`--set data.source`
    is refused on resume); now one line names config.json's field, and setting it there works."""
    old = here / "old"
    old.mkdir()
    os.replace(here / "s.txt", old / "a.txt")
    monkeypatch.chdir(old)
    assert main(["train", *TRAIN, "--text", "a.txt", "--out", "B"]) == 0
    from tinylm.data.records import shakespeare_instructions

    (old / "ft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in shakespeare_instructions(limit=40)))
    assert main(["finetune", "B", "--data", "ft.jsonl", "--out", "F", "--max-steps", "2",
                 "--set", "train.eval_interval=2"]) == 0
    monkeypatch.chdir(here)
    os.replace(old, here / "new")
    new = here / "new"
    capsys.readouterr()
    assert main(["finetune", "--resume", "new/F", "--max-steps", "4"]) == 1
    assert "records data.source" in _one_error(capsys)
    _set_recorded(new / "F", data__source=str(new / "ft.jsonl"))
    assert main(["finetune", "--resume", "new/F", "--max-steps", "4"]) == 1
    assert f"records finetune.base = {old / 'B'}, which no longer exists" in _one_error(capsys)
    _set_recorded(new / "F", finetune__base=str(new / "B"))
    assert main(["finetune", "--resume", "new/F", "--max-steps", "4"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "new/B", "--max-steps", "8"]) == 1
    err = _one_error(capsys)
    assert f"{new / 'B' / 'config.json'} records data.source = {old / 'a.txt'}, which no longer exists" in err
    assert err.endswith("then run `tinylm train --resume new/B` again"), err
    assert main(["train", "--resume", "new/B", "--set", f"data.source={new / 'a.txt'}"]) == 1
    assert "set its new place in the run's config.json" in _one_error(capsys)
    _set_recorded(new / "B", data__source=str(new / "a.txt"))
    assert main(["train", "--resume", "new/B", "--max-steps", "8"]) == 0  # the fix (after F's: B's weights change)
    capsys.readouterr()
    assert main(["eval", "new/B", "--data", "new/a.txt"]) == 1  # a file where a data directory belongs
    assert _one_error(capsys).endswith("give a text file with --text new/a.txt, or prepare it first: tinylm "
                                       "prepare new/a.txt --out DATA_DIR")
    assert main(["eval", "new/B", "--text", "new/a.txt"]) == 0

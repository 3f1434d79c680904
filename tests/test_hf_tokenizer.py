"""The `hf` tokenizer kind: any tokenizer.json, its special tokens and BOS handling, equal to transformers'
AutoTokenizer; saved self-contained into data and run directories; chunk-safe parallel encoding."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")

from hf_models import SAMPLE_TEXTS, byte_level_bpe, sentencepiece, unigram, wordpiece  # noqa: E402

from tinylm.cli import main  # noqa: E402
from tinylm.data.prepare import encode_texts, load_split, read_meta  # noqa: E402
from tinylm.errors import TokenizerError  # noqa: E402
from tinylm.tokenizers import HFTokenizer, load_tokenizer, parse_spec, train_tokenizer  # noqa: E402
from tinylm.tokenizers.base import safe_chunks  # noqa: E402

BUILDERS = {"byte_level": byte_level_bpe, "sentencepiece": sentencepiece, "wordpiece": wordpiece, "unigram": unigram}
LOSSLESS = ("byte_level", "sentencepiece")


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_tokenizers")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def pairs(tokenizer_dirs: dict[str, Path]) -> dict[str, tuple[HFTokenizer, object]]:
    """(tinylm's hf tokenizer, transformers' AutoTokenizer) for each test tokenizer."""
    return {name: (train_tokenizer(f"hf:{d}", []), transformers.AutoTokenizer.from_pretrained(str(d)))
            for name, d in tokenizer_dirs.items()}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_ids_equal_auto_tokenizer(pairs: dict, name: str) -> None:
    ours, auto = pairs[name]
    for text in [*SAMPLE_TEXTS, "", " ", "\n", "x" * 300]:
        assert ours.encode(text) == auto.encode(text, add_special_tokens=False), (name, text)
        if ours.encode(text):  # a prompt: with the BOS the original tokenizer adds (sentencepiece: <s>)
            assert ours.prompt_ids(text) == auto(text)["input_ids"], (name, text)
        else:  # a prompt that encodes to nothing is the empty prompt (docs/input-rules.md)
            assert ours.prompt_ids(text) == ours.start_ids()
    assert ours.vocab_size == len(auto)
    assert ours.eot_id == auto.eos_token_id
    assert ours.unk_id == auto.unk_token_id


def test_special_tokens_and_bos(pairs: dict) -> None:
    spm, _ = pairs["sentencepiece"]
    assert (spm.bos_id, spm.eot_id, spm.unk_id, spm.add_bos) == (1, 2, 0, True)
    assert spm.start_ids() == [1] and spm.markers == {1, 2} and spm.stop_ids == [2]
    assert spm.encode("<s>hi</s>")[0] == 1 and spm.encode("<s>hi</s>")[-1] == 2  # written special tokens
    gpt_like, _ = pairs["byte_level"]
    assert (gpt_like.bos_id, gpt_like.eot_id, gpt_like.add_bos) == (None, 0, False)
    assert gpt_like.start_ids() == [0]
    bert, _ = pairs["wordpiece"]
    assert bert.count_unknown("hello ☃ snowman") >= 1 and spm.count_unknown("☃") == 0  # byte fallback


def test_generation_config_stop_ids(tokenizer_dirs: dict[str, Path], tmp_path: Path) -> None:
    d = tmp_path / "tok"
    shutil.copytree(tokenizer_dirs["sentencepiece"], d)
    (d / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2, 5]}))
    tok = train_tokenizer(f"hf:{d}", [])
    assert tok.eot_id == 2 and tok.stop_ids == [2, 5] and 5 in tok.markers


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_round_trip_and_auto_tokenizer_property(pairs: dict, text: str) -> None:
    for name in LOSSLESS:
        ours, auto = pairs[name]
        ids = ours.encode(text)
        assert ids == auto.encode(text, add_special_tokens=False)
        if "<" not in text:  # text spelling a special token encodes to its id, which decodes to that text
            assert ours.decode(ids) == text, name


def test_decode_padded_ids(pairs: dict) -> None:
    ours, _ = pairs["byte_level"]
    ids = ours.encode("hello")
    assert ours.decode([*ids, ours.vocab_size + 3, *ids]) == "hello\ufffdhello"


@pytest.mark.parametrize("name", list(BUILDERS))
def test_long_text_encoding_equals_whole_text(pairs: dict, name: str, corpus_text: str) -> None:
    """Preparation cuts long texts with safe_chunks only where the tokenizer provably has a boundary;
    sentencepiece-style and unigram tokenizers (a "▁" prepended to every input) encode whole."""
    ours, _ = pairs[name]
    text = (corpus_text + "\n" + "\n".join(SAMPLE_TEXTS)) * 2  # > 65,536 characters: several chunks
    assert len(safe_chunks(text)) > 1
    assert ours.chunk_safe == (name in ("byte_level", "wordpiece"))
    whole = ours.encode(text)
    assert encode_texts(ours, [text])[0].tolist() == whole
    assert encode_texts(ours, [text], threads=False)[0].tolist() == whole
    assert ours.encode_long(text) == whole
    if not ours.chunk_safe:  # the check matters: chunk by chunk would differ
        assert [i for c in safe_chunks(text) for i in ours.encode(c)] != whole


def test_save_is_self_contained_and_unchanged(tokenizer_dirs: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "original"
    shutil.copytree(tokenizer_dirs["sentencepiece"], src)
    tok = train_tokenizer(f"hf:{src / 'tokenizer.json'}", [])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tok.save(run_dir)
    originals = {f.name: f.read_bytes() for f in src.iterdir()}
    shutil.rmtree(src)  # the run must not depend on the original path
    restored = load_tokenizer(run_dir)
    assert isinstance(restored, HFTokenizer) and restored.fingerprint() == tok.fingerprint()
    assert restored.encode(SAMPLE_TEXTS[2]) == tok.encode(SAMPLE_TEXTS[2])
    for name, data in originals.items():  # the files are written back byte for byte
        assert (run_dir / name).read_bytes() == data
    auto = transformers.AutoTokenizer.from_pretrained(str(run_dir))
    assert auto(SAMPLE_TEXTS[0])["input_ids"] == restored.prompt_ids(SAMPLE_TEXTS[0])


def test_prepare_with_hf_tokenizer(tokenizer_dirs: dict[str, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    """`tinylm prepare SOURCE --tokenizer hf:DIR`: documents open with <s> and end with </s>, as Llama's."""
    corpus = tmp_path / "docs.txt"
    docs = ["Once upon a time there was a fox.", "The end of the story, café.", "Third document here."]
    corpus.write_text("\n<|endoftext|>\n".join(docs * 20), encoding="utf-8")
    out = tmp_path / "data"
    spec = f"hf:{tokenizer_dirs['sentencepiece']}"
    assert main(["prepare", str(corpus), "--tokenizer", spec, "--out", str(out), "--split", "shuffle"]) == 0
    meta = read_meta(out)
    assert meta["tokenizer"]["kind"] == "hf" and meta["tokenizer"]["spec"] == spec
    tok = load_tokenizer(out)
    ids = np.concatenate([load_split(out, "train"), load_split(out, "val")]).tolist()
    assert ids.count(tok.bos_id) == 60 and ids.count(tok.eot_id) == 60
    first = ids[:ids.index(tok.eot_id) + 1]
    assert first in ([tok.bos_id, *tok.encode(d), tok.eot_id] for d in docs)


def test_bad_hf_specs_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(TokenizerError, match="does not exist"):
        train_tokenizer(f"hf:{tmp_path / 'missing'}", [])
    with pytest.raises(TokenizerError, match="needs a path"):
        parse_spec("hf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="has no tokenizer.json"):
        train_tokenizer(f"hf:{tmp_path / 'empty'}", [])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nonsense"}}')
    with pytest.raises(TokenizerError, match="tokenizer.json failed to load"):
        train_tokenizer(f"hf:{bad}", [])
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text\n" * 10)
    assert main(["prepare", str(corpus), "--tokenizer", f"hf:{bad}", "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "failed to load" in err and "Traceback" not in err

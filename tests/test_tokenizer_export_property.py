"""Exported tokenizers agree with tinylm's: equal ids on any text and equal vocabulary sizes,
for every exportable kind, checked with `transformers.AutoTokenizer` loaded from the export."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")

from tinylm.data.prepare import prepare  # noqa: E402
from tinylm.data.spec import read_source  # noqa: E402
from tinylm.interop.hf_tokenizer import export_tokenizer  # noqa: E402
from tinylm.tokenizers import Tokenizer, load_tokenizer, train_tokenizer  # noqa: E402

SPECIAL_LOOKALIKES = ["<unk>", "<eos>", "<sos>", "<pad>", "<|endoftext|>", "<UNK>", "<|endoftext|", "<unk", "\ufffd"]
TRICKY = ("\ufffd\x00\x01\x1c\x1d\x1e\x1f\x7f\x85\xa0\u2028\u2029\u200b\ufeff \t\n\r\x0b\x0c"
          "ΣσςİıßẞǅﬁÅ\u0301\u0308²³½Ⅻ١٢𝟘_'’-.,3 aZé日本🙂\U0010ffff")
PIECE = st.one_of(st.sampled_from(SPECIAL_LOOKALIKES), st.text(max_size=6),
                  st.text(alphabet=st.sampled_from(TRICKY), max_size=8))
TEXT = st.lists(PIECE, max_size=6).map("".join)
BASE_DOC = "the cat sat on the mat. 3.14 don't ’quoted’ end\n"  # so every kind has a vocabulary to train
SPECS = ["char", "word", "word:lower", "bpe:300"]


def exported(tok: Tokenizer):
    """`tok` exported and loaded back by transformers.AutoTokenizer."""
    with tempfile.TemporaryDirectory() as tmp:
        export_tokenizer(tok, Path(tmp))
        return transformers.AutoTokenizer.from_pretrained(tmp)


def assert_agree(tok: Tokenizer, auto, texts: list[str]) -> None:
    assert len(auto) == tok.vocab_size
    for text in texts:
        assert auto(text)["input_ids"] == tok.encode(text), repr(text)


@pytest.mark.parametrize("spec", SPECS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpus=st.lists(TEXT, max_size=3), texts=st.lists(TEXT, min_size=1, max_size=6))
@example(corpus=["ab\ufffdcd ab cd\n"], texts=["abz", "\ufffd", "<unk>", "", "   ", "z\ufffdz"])
@example(corpus=["ΣΑΣ ΟΔΟΣ. x²"], texts=["ΑΣ ΣΑΣ.", "İstanbul", "x² ½ a\u0301b", "a\x1cb\x1fc"])
def test_exported_tokenizer_matches_tinylm(spec: str, corpus: list[str], texts: list[str]) -> None:
    tok = train_tokenizer(spec, [BASE_DOC, *corpus])
    assert_agree(tok, exported(tok), texts + corpus)


@functools.cache
def gpt2_pair():
    tok = train_tokenizer("gpt2", [])
    return tok, exported(tok)


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(TEXT, min_size=1, max_size=6))
def test_exported_gpt2_matches_tinylm(texts: list[str]) -> None:
    assert_agree(*gpt2_pair(), texts)


def test_char_corpus_with_replacement_characters_exports_its_unknown_id(tmp_path: Path) -> None:
    """The issue's example: invalid bytes prepared with --errors replace put U+FFFD in the corpus."""
    raw = tmp_path / "bad.txt"
    raw.write_bytes(b"ab\xffcd ab cd\n" * 50)
    prepare(read_source(str(raw), "replace"), "char", tmp_path / "data")
    tok = load_tokenizer(tmp_path / "data")
    assert "\ufffd" in tok.chars
    auto = exported(tok)
    assert len(auto) == tok.vocab_size
    assert auto("abz")["input_ids"] == tok.encode("abz") == [tok.encode("a")[0], tok.encode("b")[0], tok.unk_id]
    assert auto("a\ufffd")["input_ids"] == tok.encode("a\ufffd") != tok.encode("az")
    assert auto.decode(tok.encode("abz\ufffd")) == tok.decode(tok.encode("abz\ufffd")) == "ab\ufffd\ufffd"

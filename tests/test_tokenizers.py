import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinylm.errors import TokenizerError
from tinylm.tokenizers import CharTokenizer, load_tokenizer, parse_spec, train_tokenizer
from tinylm.tokenizers.char import UNK_MARKER

ALPHABET = string.ascii_letters + string.digits + " \n.,;:'!?-é—"
TOK = CharTokenizer.train([ALPHABET])


@given(st.text(alphabet=ALPHABET))
def test_char_round_trip_over_its_alphabet(text):
    ids = TOK.encode(text)
    assert len(ids) == len(text)
    assert TOK.decode(ids) == text
    assert TOK.encode(text) == ids  # deterministic


@given(st.text())  # any Unicode, emoji and control characters included
@settings(max_examples=200)
def test_char_unknowns_map_to_unk_and_decode_to_a_marker(text):
    ids = TOK.encode(text)
    assert all(0 <= i < TOK.vocab_size for i in ids)
    expected = "".join(c if c in ALPHABET else UNK_MARKER for c in text)
    assert TOK.decode(ids) == expected
    assert TOK.count_unknown(text) == sum(c not in ALPHABET for c in text)


def test_char_vocabulary_is_sorted_with_unk_first():
    tok = CharTokenizer.train(["hello", "world"])
    assert tok.unk_id == 0 and tok.eot_id is None
    assert tok.itos[1:] == sorted(set("helloworld"))
    assert tok.vocab_size == len(set("helloworld")) + 1
    assert tok.encode("zz") == [0, 0]


def test_save_load_keeps_ids_and_fingerprint(tmp_path):
    tok = train_tokenizer("char", ["To be, or not to be: that is the question.\n"])
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, CharTokenizer)
    assert again.fingerprint() == tok.fingerprint()
    assert again.encode("question be") == tok.encode("question be")
    other = train_tokenizer("char", ["something else"])
    assert other.fingerprint() != tok.fingerprint()


def test_bad_tokenizer_input_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="unknown tokenizer 'wordpiece'; choose one of char"):
        parse_spec("wordpiece")
    with pytest.raises(TokenizerError, match="empty corpus"):
        train_tokenizer("char", ["", ""])
    with pytest.raises(TokenizerError, match="no tokenizer.tinylm.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.tinylm.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="corrupt"):
        load_tokenizer(tmp_path)


def test_start_ids_for_an_empty_prompt():
    assert TOK.start_ids() == TOK.encode("\n")

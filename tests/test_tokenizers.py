import lzma
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinylm.errors import TokenizerError
from tinylm.tokenizers import (BPETokenizer, CharTokenizer, GPT2Tokenizer, WordTokenizer, load_tokenizer, parse_spec,
                               train_tokenizer)
from tinylm.tokenizers.base import safe_chunks
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


# --------------------------------------------------------------------------- word

WORD_CORPUS = ("To be, or not to be: that is the question.\nWhether 'tis nobler in the mind to suffer\n"
               "The slings and arrows of outrageous fortune, or to take arms (against a sea of troubles)?\n"
               "I don't know; 3.14 and 1,000 are numbers. Don't stop--well-known words!\n"
               "\"Quoted,\" 'quoted' \u2018curly\u2019 \u2014 \u2026 50% $5 and/or\n")
WORD = WordTokenizer.train([WORD_CORPUS])
WORDS = WORD.itos[4:]  # words, numbers and every punctuation mark above


def test_word_splits_words_numbers_punctuation_and_keeps_contractions():
    assert WORD.split("I don't know; 3.14 and 1,000!") == ["I", "don't", "know", ";", "3.14", "and", "1,000", "!"]
    assert WORD.decode(WORD.encode("I don't know; 3.14 and 1,000!")) == "I don't know; 3.14 and 1,000!"
    assert WORD.decode(WORD.encode("To be, or not to be: that is the question.")) == \
        "To be, or not to be: that is the question."
    assert WORD.decode(WORD.encode("( against a sea )")) == "(against a sea)"
    assert WORD.normalize('he said " to be " and ( so ) -- well - known') == 'he said "to be" and (so)--well-known'


def test_word_specials_have_fixed_ids_and_oov_maps_to_unk():
    assert WORD.itos[:4] == ["<pad>", "<unk>", "<sos>", "<eos>"]
    assert (WORD.unk_id, WORD.eot_id) == (1, 3)
    assert WORD.encode("to be zyzzyva") == [WORD.stoi["to"], WORD.stoi["be"], 1]
    assert WORD.decode(WORD.encode("to be zyzzyva")) == "to be <unk>"
    assert WORD.count_unknown("to be zyzzyva qwerty") == 2


def test_word_special_tokens_in_text_encode_to_their_ids():
    """A prompt such as "<sos> to be" starts like every prepared document: with the <sos> id."""
    from tinylm.data.prepare import encode_documents

    assert (WORD.bos_id, WORD.start_ids()) == (2, [2])
    assert WORD.encode("<sos> to be<eos><unk>") == [2, WORD.stoi["to"], WORD.stoi["be"], 3, 1]
    assert WORD.decode(WORD.encode("<sos> to be <eos>")) == "<sos> to be <eos>"
    assert WORD.count_unknown("<sos> to <eos>") == 0
    assert WordTokenizer.train(["<sos> a <sos> b <eos>"], vocab_size=10).itos[4:] == ["a", "b"]  # not words
    ids, _ = encode_documents(WORD, ["to be", "or not"])
    assert ids.tolist() == [2, *WORD.encode("to be"), 3, 2, *WORD.encode("or not"), 3]


def test_word_vocabulary_is_capped_most_frequent_first_ties_alphabetical():
    tok = WordTokenizer.train(["b a c a b a d d"], vocab_size=4 + 3)
    assert tok.itos[4:] == ["a", "b", "d"]  # a:3, then b and d (2 each) alphabetically; c dropped
    assert tok.vocab_size == 7
    assert WordTokenizer.train(["b a c a b a d d"], vocab_size=7).itos == tok.itos  # deterministic


def test_word_lowercasing_is_an_option_of_the_spec():
    tok = train_tokenizer("word:lower", ["The the THE cat"])
    assert tok.itos[4:] == ["the", "cat"]
    assert tok.decode(tok.encode("THE Cat")) == "the cat"
    assert train_tokenizer("word:50:lower", ["a b"]).lower


@given(st.lists(st.sampled_from(WORDS), max_size=40))
@settings(max_examples=300)
def test_word_round_trips_normalized_text(tokens):
    text = " ".join(tokens)
    normalized = WORD.normalize(text)
    assert WORD.decode(WORD.encode(text)) == normalized
    assert WORD.decode(WORD.encode(normalized)) == normalized  # normalizing is stable
    assert WORD.encode(text) == WORD.encode(text)


# --------------------------------------------------------------------------- gpt2

# Reference ids from tiktoken.get_encoding("gpt2"), checked in the test below as well.
GPT2_SAMPLES = {
    "Hello world": [15496, 995],
    " Hello, world!": [18435, 11, 995, 0],
}
MULTILINGUAL = ("Hello world! Ça va? Grüße aus Köln. Привет, мир. こんにちは世界。 你好，世界。 مرحبا بالعالم "
                "שלום עולם 🙂👍🏽 x² ∑ 1,234.56 don't <|endoftext|> \t\n\r\x00\x7f")


def test_gpt2_works_offline_and_matches_reference_ids(no_network):
    tok = train_tokenizer("gpt2", [])
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    for text, ids in GPT2_SAMPLES.items():
        assert tok.encode(text) == ids
    assert tok.decode(tok.encode(MULTILINGUAL)) == MULTILINGUAL
    assert tok.decode([50256]) == "<|endoftext|>"
    assert 50256 not in tok.encode("<|endoftext|>")  # text that looks special stays text


def test_gpt2_ids_equal_tiktoken_get_encoding(tmp_path, monkeypatch, no_network):
    """tiktoken's own `get_encoding("gpt2")`, fed the bundled files through its cache (it checks
    their sha256 itself), gives exactly our ids."""
    import hashlib

    import tiktoken
    import tiktoken.registry

    from tinylm.tokenizers.gpt2 import OFFICIAL_URLS, vocab_files

    cache = tmp_path / "tiktoken"
    cache.mkdir()
    for name, path in vocab_files().items():
        (cache / hashlib.sha1(OFFICIAL_URLS[name].encode()).hexdigest()).write_bytes(path.read_bytes())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    reference = tiktoken.get_encoding("gpt2")
    tok = GPT2Tokenizer()
    for text in [MULTILINGUAL, *GPT2_SAMPLES, "The quick brown fox" * 20]:
        assert tok.encode(text) == reference.encode_ordinary(text)
    assert reference.encode("<|endoftext|>", allowed_special="all") == [tok.eot_id]


@given(st.text())
@settings(max_examples=300, deadline=None)
def test_gpt2_round_trips_any_unicode(text):
    tok = GPT2Tokenizer()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode(text) == ids


def test_gpt2_padded_ids_decode_to_a_marker():
    tok = GPT2Tokenizer()
    assert tok.decode([15496, 50300, 995]) == "Hello\ufffd world"


def test_gpt2_refuses_a_corrupt_bundled_vocabulary(tmp_path, monkeypatch):
    import tinylm.tokenizers.gpt2 as gpt2

    monkeypatch.setenv("TINYLM_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "assets"
    fake.mkdir()
    (fake / "encoder.json.xz").write_bytes(lzma.compress(b"{}"))
    (fake / "vocab.bpe.xz").write_bytes(b"not xz")
    monkeypatch.setattr(gpt2, "ASSETS", fake)
    with pytest.raises(TokenizerError, match="does not match the official sha256; reinstall tinylm"):
        gpt2.vocab_files()


# --------------------------------------------------------------------------- bpe

BPE = BPETokenizer.train([WORD_CORPUS * 3, "Ça va? 🙂 Grüße."], vocab_size=300)


@given(st.text())
@settings(max_examples=300, deadline=None)
def test_bpe_round_trips_any_unicode(text):
    ids = BPE.encode(text)
    assert all(0 <= i < BPE.vocab_size for i in ids)
    assert BPE.decode(ids) == text
    assert BPE.encode(text) == ids


def test_bpe_eot_and_vocabulary_size():
    assert BPE.vocab_size == 300 and BPE.eot_id == 0
    assert BPE.decode([BPE.eot_id]) == "<|endoftext|>"
    with pytest.raises(TokenizerError, match="below 257"):
        train_tokenizer("bpe:200", ["some text"])
    with pytest.raises(TokenizerError, match="empty corpus"):
        train_tokenizer("bpe:300", [])


def test_bpe_saves_a_standard_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer

    BPE.save(tmp_path)
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.encode(WORD_CORPUS).ids == BPE.encode(WORD_CORPUS)
    again = load_tokenizer(tmp_path)
    assert again.fingerprint() == BPE.fingerprint() and again.encode("to be") == BPE.encode("to be")


@pytest.mark.slow
def test_bpe_on_tinyshakespeare_compresses_better_than_gpt2_from_4096_tokens(shared_data):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    gpt2_tokens = len(GPT2Tokenizer().encode(text))
    counts = {size: len(train_tokenizer(f"bpe:{size}", [text]).encode(text)) for size in (2048, 4096)}
    # 2,048 merges fall short of GPT-2's 50k vocabulary; 4,096 in-domain tokens beat it (BENCHMARKS.md)
    assert counts[4096] < gpt2_tokens < counts[2048] < len(text) / 2.5


def test_bpe_tokenizer_json_loads_in_transformers_with_the_same_ids(tmp_path, corpus_text):
    transformers = pytest.importorskip("transformers")
    tok = train_tokenizer("bpe:1024", [corpus_text])
    tok.save(tmp_path)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    sample = corpus_text[:5000] + " Ça va? 🙂"
    assert fast(sample)["input_ids"] == tok.encode(sample)
    assert fast.decode(tok.encode(sample)) == sample


# --------------------------------------------------------------------------- all kinds


@pytest.mark.parametrize("spec", ["char", "word", "gpt2", "bpe:300"])
def test_every_kind_saves_and_loads(tmp_path, spec):
    tok = train_tokenizer(spec, [WORD_CORPUS])
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert type(again) is type(tok) and again.fingerprint() == tok.fingerprint()
    assert again.encode(WORD_CORPUS) == tok.encode(WORD_CORPUS)
    assert again.encode_batch(["to be", "or not"]) == [tok.encode("to be"), tok.encode("or not")]


@pytest.mark.parametrize("spec, message", [
    ("wordpiece", "unknown tokenizer 'wordpiece'; choose one of char, word, gpt2, bpe"),
    ("char:100", "char takes no options, not '100'"),
    ("gpt2:lower", "gpt2 takes no options"),
    ("word:big", "word takes a vocabulary size or lower, not 'big'"),
    ("word:3", "more than the 4 special tokens"),
])
def test_bad_specs_are_clear_errors(spec, message):
    with pytest.raises(TokenizerError, match=re.escape(message)):
        train_tokenizer(spec, [WORD_CORPUS])


@pytest.mark.parametrize("spec", ["char", "word", "gpt2", "bpe:300"])
def test_encoding_in_safe_chunks_gives_the_same_ids(spec):
    text = (WORD_CORPUS + "  indented line\n\n\n  \nMENENIUS:\n\tTab. 🙂\r\nX \nY\t\nZ\n 's\n'll\n\nA") * 40
    tok = train_tokenizer(spec, [text])
    for size in (1, 97):  # size 1 cuts at every place it may
        chunks = safe_chunks(text, size=size)
        assert len(chunks) > 20 and "".join(chunks) == text
        assert [i for ids in tok.encode_batch(chunks) for i in ids] == tok.encode(text)

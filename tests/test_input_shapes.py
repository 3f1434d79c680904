"""Preparation whatever the shape of the input (issue 27, item 4): text with LF, CRLF or CR line breaks
or none at all, one huge JSON-lines record, a huge Parquet cell. Memory stays bounded by the block
size, and the ids are exactly those of encoding each whole document, for every tokenizer kind.

The block, piece and batch sizes are made small here (monkeypatched module constants), so that a few
tens of kilobytes are cut in the hundreds of places a large corpus would be; bench/prepare_scale.py
--shape measures the real sizes (BENCHMARKS.md)."""

from __future__ import annotations

import importlib.util
import json
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinylm.data.prepare as prepare_module
from dataset_files import write_parquet
from hf_models import byte_level_bpe, byte_level_variant, sentencepiece, wordpiece
from tinylm.cli import main
from tinylm.console import TinylmWarning
from tinylm.data import sources
from tinylm.data.prepare import load_split, prepare, read_meta
from tinylm.data.spec import read_source
from tinylm.tokenizers import load_tokenizer, train_tokenizer
from tinylm.tokenizers.base import (
    ANY_CUTS,
    CL100K_CUTS,
    GPT2_CUTS,
    LINE_CUTS,
    WHITESPACE_CUTS,
    PieceCutter,
    safe_chunks,
)

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_prepare_scale", REPO / "bench" / "prepare_scale.py")
_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench)

SAMPLES = "中文，测试。日本語のテキスト 1234567 'll 's I'M \t\tTabs ¨é\u0301 — naïve\u00a0x\u3000y <s> <|end"
ALPHABET = [*"ab cd\n\r\t.,'!?12 34\u00a0\u3000中文¨é\u0301-_\x1c\x0b\x0cSsAz", "'s", "'ll", "<|endoftext|>",
            "\r\n", "  ", "\n\n", "123"]


def small_sizes(monkeypatch: pytest.MonkeyPatch, block: int = 4096, piece: int = 1500) -> None:
    """Blocks, pieces and batches a few KB long, so small inputs are cut where large ones would be."""
    monkeypatch.setattr(sources, "BLOCK_BYTES", block)
    monkeypatch.setattr(sources, "PIECE_CHARS", piece)
    monkeypatch.setattr(prepare_module, "PIECE_CHARS", piece)
    monkeypatch.setattr(sources, "LONG_STRING", piece // 3)
    monkeypatch.setattr(sources, "PARQUET_BATCH_BYTES", 4 * piece)
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 3 * piece)


@pytest.fixture(scope="module")
def corpus(corpus_text: str) -> str:
    return corpus_text[:30_000] + "\n" + SAMPLES


@pytest.fixture(scope="module")
def tokenizers(corpus: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tokenizer of every kind and pre-tokenizer family, trained on (or built for) the corpus."""
    texts = [corpus, corpus.replace("\n", "\r\n")]
    toks = {spec: train_tokenizer(spec, texts) for spec in ("char", "word", "gpt2", "bpe:400")}
    root = tmp_path_factory.mktemp("hf")
    for name, build in {"hf-gpt2": byte_level_bpe, "hf-wordpiece": wordpiece, "hf-sentencepiece": sentencepiece,
                        "hf-llama3": lambda d: byte_level_variant(d, "llama3"),
                        "hf-smollm": lambda d: byte_level_variant(d, "smollm")}.items():
        toks[name] = train_tokenizer(f"hf:{build(root / name)}", [])
    return toks


# --------------------------------------------------------------------------- where a text may be cut


def test_each_tokenizer_knows_where_it_may_be_cut(tokenizers: dict) -> None:
    expected = {"char": ANY_CUTS, "word": WHITESPACE_CUTS, "gpt2": GPT2_CUTS, "bpe:400": CL100K_CUTS,
                "hf-gpt2": GPT2_CUTS, "hf-smollm": GPT2_CUTS, "hf-llama3": CL100K_CUTS, "hf-wordpiece": WHITESPACE_CUTS,
                "hf-sentencepiece": None}
    assert {name: tokenizers[name].cuts for name in expected} == expected
    assert not tokenizers["hf-sentencepiece"].chunk_safe and tokenizers["gpt2"].chunk_safe


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=30))
def test_every_allowed_cut_encodes_like_the_whole_text(tokenizers: dict, parts: list[str]) -> None:
    """For every tokenizer, at every place its `cuts` allow, the two sides encode to the whole's ids."""
    text = "".join(parts)
    for name, tok in tokenizers.items():
        if tok.cuts is None:
            continue
        whole = tok.encode(text)
        for match in tok.cuts.finditer(text):
            p = match.start()
            if 0 < p < len(text):
                assert tok.encode(text[:p]) + tok.encode(text[p:]) == whole, (name, text[:p], text[p:])


def test_the_cuts_differ_where_the_regexes_do(tokenizers: dict) -> None:
    """The check above can fail: each family's cuts are wrong for the other (so they are not one rule)."""
    gpt2, bpe = tokenizers["gpt2"], tokenizers["bpe:400"]
    # cl100k's cut after a run of line breaks: GPT-2's regex splits the run's last break off before a word
    assert CL100K_CUTS.search("a\n\nb").start() == 3
    assert gpt2.encode("a\n\n") + gpt2.encode("b") != gpt2.encode("a\n\nb")
    # GPT-2's cut before a line break: cl100k keeps punctuation with the breaks after it
    assert GPT2_CUTS.search("a.\nb", 1).start() == 2
    assert bpe.encode("a.") + bpe.encode("\nb") != bpe.encode("a.\nb")
    # and what no tokenizer but char may be cut at: inside a word
    assert gpt2.encode("hel") + gpt2.encode("lo") != gpt2.encode("hello")


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=60), splits=st.lists(st.integers(1, 9)),
       size=st.integers(1, 12), cuts=st.sampled_from([ANY_CUTS, WHITESPACE_CUTS, GPT2_CUTS, CL100K_CUTS, LINE_CUTS,
                                                      None]))
def test_piece_cutter_cuts_only_where_allowed(parts: list[str], splits: list[int], size: int, cuts) -> None:
    """Text arriving in pieces cut anywhere comes out whole, in pieces that end where `cuts` allows;
    what is held is the text since the last allowed cut once `size` characters are."""
    text = "".join(parts)
    arriving, start = [], 0
    for n in splits + [len(text)]:
        arriving.append(text[start:start + n])
        start += n
    cutter, out, ends, worst = PieceCutter(cuts, size), [], [], 0
    for part in arriving:
        for piece in cutter.add(part):
            out.append(piece)
            ends.append(sum(map(len, out)))
        worst = max(worst, cutter.held)
    out.append(cutter.end())
    assert "".join(out) == text and cutter.held == 0
    allowed = {m.start() for m in cuts.finditer(text)} if cuts is not None else set()
    assert all(end in allowed for end in ends)
    if cuts is None:
        assert not ends
    if cuts is ANY_CUTS:  # a place to cut everywhere: never more than a piece and an arriving part held
        assert worst <= size + max(map(len, arriving)) + 1


def test_safe_chunks_use_the_tokenizers_cuts(tokenizers: dict, corpus: str) -> None:
    text = corpus.replace("\n", "\r\n") * 3  # no lone line break anywhere: the old rule had no place to cut
    assert len(safe_chunks(text, 4096)) == 1
    for name, tok in tokenizers.items():
        chunks = safe_chunks(text, 4096, tok.cuts)
        assert "".join(chunks) == text and (len(chunks) > 10) == tok.chunk_safe, name
        assert tok.encode_long(text) == tok.encode(text), name


# --------------------------------------------------------------------------- reading files in blocks


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.lists(st.sampled_from([b"a", b" ", b"\n", b"\r", b"\r\n", "é".encode(), "中".encode(), "😀".encode(),
                                      b"\xff", b"\xe4\xb8", b"\x80", b"<|endoftext|>", b"<|end"]), max_size=80),
       block=st.integers(1, 9), bom=st.booleans())
def test_blocks_decode_like_the_whole_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: list[bytes],
                                           block: int, bom: bool) -> None:
    """Blocks end at line breaks, else between characters: decoded, they are the whole file's text,
    invalid bytes replaced alike; strict decoding names the same first bad offset."""
    raw = b"".join(data)
    path = tmp_path / "t.txt"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + raw)
    monkeypatch.setattr(sources, "BLOCK_BYTES", block)
    assert "".join(sources.read_blocks(path, "replace")) == raw.decode("utf-8", "replace")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        with pytest.raises(sources.DataError, match=f"byte offset {e.start + 3 * bom}:"):
            list(sources.read_blocks(path, "strict"))
    else:
        assert "".join(sources.read_blocks(path, "strict")) == raw.decode("utf-8")


def _documents(pieces) -> list[str]:
    docs, parts = [], []
    for text, last in pieces:
        parts.append(text)
        if last:
            docs.append("".join(parts))
            parts = []
    assert not parts
    return docs


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(["word ", "é", "\n", "\r\n", "\r", "  ", "<|endoftext|>", "\n<|endoftext|>\n",
                                       "\r\n<|endoftext|>\r\n", " = Title = \n", " = = Sub = = \n"]), max_size=60),
       block=st.integers(1, 12), piece=st.integers(2, 20))
def test_documents_do_not_depend_on_block_or_piece_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       parts: list[str], block: int, piece: int) -> None:
    """.txt documents (split at <|endoftext|>, a separator cut by a block end included) and WikiText
    articles are the same read in blocks of a few bytes and pieces of a few characters as read whole."""
    from tinylm.data.catalog import read_wikitext

    path = tmp_path / "t.txt"
    path.write_bytes("".join(parts).encode("utf-8"))
    whole = {reader: _documents(reader(path)) for reader in (sources.read_text, read_wikitext)}
    monkeypatch.setattr(sources, "BLOCK_BYTES", block)
    monkeypatch.setattr(sources, "PIECE_CHARS", piece)
    for reader, docs in whole.items():
        assert _documents(reader(path)) == docs
    assert all(d.strip() for d in whole[sources.read_text])  # whitespace-only documents are dropped


# --------------------------------------------------------------------------- records too long to hold


def _strings(draw_from: str) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(list(draw_from) + ["\ud83d", "\u2028", "😀"]), max_size=60)


_values = st.recursive(st.none() | st.integers(-9, 9) | st.floats(allow_nan=False, allow_infinity=False)
                       | _strings('ab "\\\n\t{}[],:é'),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_strings("ab:"), inner, max_size=3),
                       max_leaves=8)
_records = st.dictionaries(_strings('ab"{'), _values, max_size=3).flatmap(
    lambda r: st.one_of(st.just(r), _strings('ab "\\\n\t{}é').map(lambda t: {**r, "text": t})))


def _whole_line_documents(path: Path) -> list[str]:
    """read_jsonl's documents computed by parsing each whole line (the reference)."""
    docs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        record = sources._parse_line(path, number, line)
        if record is None:
            continue
        if "text" not in record:
            raise sources.DataError("no text field")
        text = record["text"]
        if not isinstance(text, (str, type(None))):
            raise sources.DataError("not text")
        if text and not text.isspace():
            docs.append(text)
    return docs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(_records, min_size=1, max_size=4), ascii_only=st.booleans(),
       damage=st.none() | st.tuples(st.integers(0, 10_000), st.sampled_from(['"', "\\", "}", "x", "\\u12", "\\ud800"])))
def test_long_records_read_as_they_come_equal_whole_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         records: list[dict], ascii_only: bool, damage) -> None:
    """A JSON-lines record longer than a piece is decoded as it arrives (escapes and surrogate pairs
    across parts included): its documents, and whether the file is refused, equal whole-line parsing."""
    lines = []
    for record in records:
        line = json.dumps(record, ensure_ascii=ascii_only)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate can only be written escaped
            line = json.dumps(record)
        lines.append(line)
    text = "\n".join(lines)
    if damage is not None:
        at = damage[0] % (len(text) + 1)
        text = text[:at] + damage[1] + text[at:]
    path = tmp_path / "r.jsonl"
    path.write_text(text, encoding="utf-8")
    try:
        expected: list[str] | None = _whole_line_documents(path)
    except sources.DataError:
        expected = None
    monkeypatch.setattr(sources, "BLOCK_BYTES", 7)
    monkeypatch.setattr(sources, "PIECE_CHARS", 12)
    monkeypatch.setattr(sources, "LONG_STRING", 5)
    try:
        got: list[str] | None = _documents(sources.read_jsonl(path, "text"))
    except sources.DataError as e:
        assert "line" in str(e)  # the error names the line
        got = None
    assert got == expected


def test_a_long_record_with_its_text_twice_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small_sizes(monkeypatch)
    path = tmp_path / "twice.jsonl"
    path.write_text(json.dumps({"text": "x " * 5000, "text2": 1}).replace('"text2"', '"text"') + "\n")
    with pytest.raises(sources.DataError, match="line 1 has the field 'text' twice"):
        list(sources.read_jsonl(path, "text"))


# --------------------------------------------------------------------------- every shape, every tokenizer


def write_shape(path: Path, text: str, shape: str) -> Path:
    """`text` as one document of `shape` (a file laid out as bench/prepare_scale.py --shape does)."""
    if shape == "jsonl":
        path = path.with_suffix(".jsonl")
        path.write_text(json.dumps({"id": 1, "text": text}) + "\n" + json.dumps({"id": 2}).replace("}", ', "text": null}')
                        + "\n", encoding="utf-8")
    elif shape == "parquet":
        path = path.with_suffix(".parquet")
        write_parquet(path, [text, None, " "], row_group=2)
    else:
        breaks = {"lf": "\n", "crlf": "\r\n", "cr": "\r", "oneline": " "}[shape]
        path.write_bytes(text.replace("\n", breaks).encode("utf-8"))
    return path


def shaped_text(text: str, shape: str) -> str:
    return text.replace("\n", {"crlf": "\r\n", "cr": "\r", "oneline": " "}.get(shape, "\n"))


def expected_splits(tok, text: str, val_fraction: float) -> tuple[list[int], list[int]]:
    """What a tail split of one document gives: its UTF-8 head and tail, each a document."""
    raw = text.encode("utf-8")
    head = raw[:int(len(raw) * (1 - val_fraction))].decode("utf-8", errors="ignore")
    bos = [tok.bos_id] if tok.bos_id is not None else []
    eot = [tok.eot_id] if tok.eot_id is not None else []
    return bos + tok.encode(head) + eot, bos + tok.encode(text[len(head):]) + eot


@pytest.mark.parametrize("shape", ["lf", "crlf", "cr", "oneline", "jsonl", "parquet"])
@pytest.mark.parametrize("spec", ["char", "word", "gpt2", "bpe:400", "hf-llama3", "hf-sentencepiece"])
def test_every_shape_prepares_like_the_whole_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corpus: str,
                                                  tokenizers: dict, shape: str, spec: str) -> None:
    """One long document of each shape, read in blocks and pieces of a few KB: the data directory
    holds the ids of the whole document encoded at once, and a trained vocabulary is the one the
    whole text gives."""
    small_sizes(monkeypatch)
    text = shaped_text(corpus, shape)
    path = write_shape(tmp_path / "doc", corpus, shape)
    given = tokenizers[spec] if spec.startswith("hf") else spec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TinylmWarning)  # (a cell of Parquet, the held text of sentencepiece)
        out = prepare(str(path), given, tmp_path / "data", 0.3)
    tok = load_tokenizer(out)
    if isinstance(given, str) and tok.kind != "gpt2":
        assert tok.fingerprint() == train_tokenizer(spec, [text]).fingerprint()
    train, val = expected_splits(tok, text, 0.3)
    assert load_split(out, "train").tolist() == train
    assert load_split(out, "val").tolist() == val
    assert read_meta(out)["source"]["documents"] == 2


def test_prepare_of_crlf_text_from_the_command_line(tmp_path: Path, corpus: str, capsys) -> None:
    """The issue's example at its own sizes: a CRLF file with GPT-2's tokenizer."""
    path = tmp_path / "shake.txt"
    path.write_bytes(corpus.replace("\n", "\r\n").encode("utf-8"))
    assert main(["prepare", str(path), "--tokenizer", "gpt2", "--out", str(tmp_path / "data")]) == 0
    tok = load_tokenizer(tmp_path / "data")
    train, val = expected_splits(tok, corpus.replace("\n", "\r\n"), 0.1)
    assert load_split(tmp_path / "data", "train").tolist() == train
    assert load_split(tmp_path / "data", "val").tolist() == val


def test_text_with_no_place_to_cut_is_held_exactly_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  tokenizers: dict) -> None:
    """A long stretch where the tokenizer has no safe cut (no space for gpt2; anywhere for a
    SentencePiece-style tokenizer) is held whole rather than cut: the ids stay exact, a warning says so."""
    small_sizes(monkeypatch)
    monkeypatch.setattr(prepare_module, "HELD_WARNING", 10_000)
    text = "Lorem-ipsum,dolor:sit;amet." * 2000 + " the end"
    path = tmp_path / "unbroken.txt"
    path.write_text(text)
    for name in ("gpt2", "hf-sentencepiece"):
        tok = tokenizers[name]
        with pytest.warns(TinylmWarning, match=f"held in memory to encode them exactly: the {tok.kind} tokenizer"):
            out = prepare(str(path), tok, tmp_path / name, 0.5)
        train, val = expected_splits(tok, text, 0.5)
        assert load_split(out, "train").tolist() == train and load_split(out, "val").tolist() == val


# --------------------------------------------------------------------------- bounded memory


def _peak_bytes(run) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("shape", ["crlf", "cr", "oneline", "jsonl", "parquet"])
def test_memory_does_not_grow_with_one_long_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corpus: str,
                                                    shape: str) -> None:
    """Python's peak allocation preparing one document of 0.3 MB and of 1.2 MB: the same, give or take
    a block, whatever the line breaks (it grew with the document when only LF ended a block)."""
    small_sizes(monkeypatch, block=16_384, piece=8192)

    def peak(copies: int) -> int:
        path = write_shape(tmp_path / f"doc{copies}", corpus * copies, shape)
        return _peak_bytes(lambda: prepare(str(path), "char", tmp_path / f"data{copies}", workers=1))

    small, large = peak(10), peak(40)
    assert large - small < 200_000, (small, large)  # the document grew by 900,000 characters


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["crlf", "jsonl-record"])
def test_12_mb_of_one_document_prepares_in_bounded_memory(tmp_path: Path, shape: str) -> None:
    """At full block and piece sizes, in a separate process (its peak RSS): one 12 MB document with
    CRLF line breaks, or as one JSON-lines record (which took over 500 MB when held whole)."""
    import os

    corpus = _bench.make_shape(tmp_path / "corpus.txt", 12_000_000, shape)
    env = {**os.environ, "TINYLM_CACHE": str(tmp_path / "cache")}
    run, main_mb, worker_mb = _bench.run_prepare([str(corpus), "--out", str(tmp_path / "data")], env)
    assert run.returncode == 0, run.stderr
    assert read_meta(tmp_path / "data")["splits"]["train"]["tokens"] > 10_000_000
    print(json.dumps({"shape": shape, "main_rss_mb": main_mb, "worker_rss_mb": worker_mb}))
    assert 0 < main_mb < 300 and worker_mb < 300


# --------------------------------------------------------------------------- hf tokenizers that cannot be cut


def _variant(base: Path, tmp: Path, name: str, change) -> object:
    """The byte-level test tokenizer with its tokenizer.json changed by `change(spec)`."""
    d = tmp / name
    d.mkdir()
    for f in base.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    spec = json.loads((d / "tokenizer.json").read_text())
    change(spec)
    (d / "tokenizer.json").write_text(json.dumps(spec))
    return train_tokenizer(f"hf:{d}", [])


def test_hf_tokenizers_without_a_provable_cut_are_not_cut(tmp_path: Path) -> None:
    """Added tokens that strip the spaces beside them, normalizers that change spaces and pre-tokenizer
    steps that map them before splitting leave no place to cut: each is shown to change ids at a place
    that is safe for the same tokenizer without it."""
    base = byte_level_bpe(tmp_path / "base")
    plain = train_tokenizer(f"hf:{base}", [])
    assert plain.cuts is GPT2_CUTS

    def lstrip_mask(spec: dict) -> None:
        spec["added_tokens"].append({"id": max(spec["model"]["vocab"].values()) + 1, "content": "<mask>",
                                     "single_word": False, "lstrip": True, "rstrip": False, "normalized": False,
                                     "special": True})

    def newline_to_space(spec: dict) -> None:
        spec["normalizer"] = {"type": "Replace", "pattern": {"String": "\n"}, "content": " "}

    def bytes_then_whitespace(spec: dict) -> None:
        spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            {"type": "WhitespaceSplit"}]}

    for name, change, text in (("lstrip", lstrip_mask, "a\n<mask>b"), ("replace", newline_to_space, "a\nb")):
        tok = _variant(base, tmp_path, name, change)
        assert tok.cuts is None, name
        assert LINE_CUTS.search(text).start() == 2  # the place every other tokenizer may be cut at
        assert tok.encode(text[:2]) + tok.encode(text[2:]) != tok.encode(text), name
        assert tok.encode_long(text * 3000) == tok.encode(text * 3000)  # encoded whole: exact
    bert = _variant(base, tmp_path, "bert-normalizer", lambda s: s.update(normalizer={
        "type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "strip_accents": None,
        "lowercase": False}))
    assert bert.cuts is None  # it turns "\n" into " ", which GPT-2's regex joins to the next word
    assert _variant(base, tmp_path, "bytes-first", bytes_then_whitespace).cuts is None  # no space left to split at


def test_bounded_pieces_reach_the_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corpus: str) -> None:
    """What is encoded (in this process or a worker) comes in pieces about PIECE_CHARS long, however
    long the one-line document: the routed pieces, re-cut, stay below a piece plus a block."""
    small_sizes(monkeypatch)
    path = write_shape(tmp_path / "doc", corpus * 4, "oneline")
    src = read_source(str(path))
    tok = train_tokenizer("gpt2", [])
    routed = prepare_module._route(src, "tail", 0.1, 0, path.stat().st_size, False, lambda s: False)
    lengths = [len(text) for _, text, _ in prepare_module._cut_documents(routed, tok, "doc")]
    assert len(lengths) > 50 and max(lengths) <= 1500 + 4096
    assert np.sum(lengths) == len(shaped_text(corpus * 4, "oneline"))

import lzma
import re

import numpy as np
import pytest
import torch

import tinylm.data.prepare as prepare_module
from tinylm.config import DataConfig
from tinylm.data import RandomWindows, load_split, read_meta, read_source, resolve_data_dir
from tinylm.data.prepare import _route, prepare
from tinylm.data.sources import Source
from tinylm.data.sources import builtin_corpus_path, builtin_provenance
from tinylm.errors import DataError
from tinylm.fileio import sha256_bytes
from tinylm.tokenizers import load_tokenizer


def test_bundled_corpus_matches_its_provenance():
    prov = builtin_provenance("shakespeare")
    raw = builtin_corpus_path("shakespeare").read_bytes()
    assert len(raw) < 3_000_000
    text = lzma.decompress(raw)
    assert sha256_bytes(text) == prov["sha256"]
    assert prov["source"]["package"] == "shakespeare" and prov["source"]["version"] == "0.6"
    assert "public domain" in prov["licence"]
    src = read_source("shakespeare")
    assert len(src.documents()) == prov["documents"] == 42
    body = text.decode("utf-8")
    for boilerplate in (r"gutenberg", r"\be-?texts?\b", r"https?:", r"^@+$", r"\r", r"copyright"):
        assert not re.search(boilerplate, body, re.IGNORECASE | re.MULTILINE), boilerplate
    assert body.isascii()
    hamlet = next(d for d in src.documents() if d.startswith("HAMLET"))
    assert "To be, or not to be" in hamlet


def test_sources_file_and_folder(tmp_path):
    (tmp_path / "b.txt").write_text("second file\n")
    (tmp_path / "a.txt").write_text("first file\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("nested\n")
    (tmp_path / "notes.md").write_text("ignored")
    folder = read_source(str(tmp_path))
    assert folder.documents() == ["first file\n", "second file\n", "nested\n"]
    single = read_source(str(tmp_path / "a.txt"))
    assert single.documents() == ["first file\n"] and single.key != folder.key
    assert sorted(folder.files) == ["a.txt", "b.txt", "sub/c.txt"]


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p / "missing.txt", "missing.txt: no such file or folder"),
    (lambda p: (p / "empty.txt").write_text("") or p / "empty.txt", "is empty"),
    (lambda p: p, "contains no .txt, .jsonl or .parquet files"),
    (lambda p: (p / "latin1.txt").write_bytes(b"caf\xe9 au lait") and p / "latin1.txt",
     r"not valid UTF-8 \(byte offset 3.*--errors replace"),
])
def test_bad_sources_are_clear_errors(tmp_path, make, fragment):
    with pytest.raises(DataError, match=fragment):
        read_source(str(make(tmp_path))).documents()


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_whitespace_only_corpus_is_a_clear_error(tmp_path, tokenizer):
    (tmp_path / "blank.txt").write_text("  \n\n \n")
    with pytest.raises(DataError, match="blank.txt has no text"):
        prepare(str(tmp_path / "blank.txt"), tokenizer, tmp_path / "data")


def test_prepare_writes_tail_split_and_meta(tmp_path, corpus_text, corpus_file):
    out = prepare(str(corpus_file), "char", tmp_path / "data", val_fraction=0.1)
    meta = read_meta(out)
    tok = load_tokenizer(out)
    cut = int(len(corpus_text) * 0.9)
    train, val = load_split(out, "train"), load_split(out, "val")
    assert train.dtype == np.uint16 and meta["dtype"] == "uint16"
    assert tok.decode(train.tolist()) == corpus_text[:cut]
    assert tok.decode(val.tolist()) == corpus_text[cut:]
    assert meta["splits"]["val"]["bytes"] == len(corpus_text[cut:].encode())
    assert meta["tokenizer"]["fingerprint"] == tok.fingerprint()
    assert meta["source"]["sha256"] == read_source(str(corpus_file)).sha256


def _tail(docs: list[str], fraction: float) -> list[tuple[str, str, bool]]:
    src = Source("test", {"all": lambda: ((d, True) for d in docs)}, "key")
    total = sum(len(d.encode()) for d in docs)
    return list(_route(src, "tail", fraction, 0, total, capped=False, stop=lambda split: False))


def test_tail_split_cuts_across_documents_by_bytes():
    assert _tail(["aaaa", "bbbb", "cc"], 0.4) == [  # 10 bytes, cut at 6
        ("train", "aaaa", True), ("train", "bb", True), ("val", "bb", True), ("val", "cc", True)]
    assert _tail(["aaaaa", "bbbbb"], 0.5) == [("train", "aaaaa", True), ("val", "bbbbb", True)]
    assert _tail(["éé", "éé"], 0.4) == [  # 8 bytes, cut at 4.8 -> byte 4, never inside a character
        ("train", "éé", True), ("val", "éé", True)]
    assert _tail(["aé"], 0.5)[0] == ("train", "a", True)  # 3 bytes, cut at byte 1


def test_interrupted_prepare_is_never_taken_for_complete(tmp_path, corpus_file, monkeypatch):
    out = tmp_path / "data"
    prepare(str(corpus_file), "char", out)
    real_add = prepare_module._SplitWriter.add

    def crash_in_val(self, ids, nbytes, ends_document):
        if self.path.name == "val.bin":
            raise KeyboardInterrupt  # as if stopped half-way
        return real_add(self, ids, nbytes, ends_document)

    monkeypatch.setattr(prepare_module._SplitWriter, "add", crash_in_val)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(corpus_file), "char", out)
    with pytest.raises(DataError, match="not a complete data directory"):
        read_meta(out)
    assert not list(out.glob(".*.tmp"))  # temporary token files are cleaned up
    monkeypatch.undo()
    prepare(str(corpus_file), "char", out)
    assert read_meta(out)["splits"]["val"]["tokens"] > 0


def test_truncated_token_file_is_detected(tmp_path, corpus_file):
    out = prepare(str(corpus_file), "char", tmp_path / "data")
    with open(out / "train.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match="missing or truncated"):
        load_split(out, "train")
    (out / "meta.json").write_text("{}")
    with pytest.raises(DataError, match="corrupt"):
        read_meta(out)
    with pytest.raises(DataError, match="does not exist"):
        read_meta(tmp_path / "nowhere")


def test_source_is_prepared_once_into_the_cache(corpus_file):
    first, made = resolve_data_dir(DataConfig(source=str(corpus_file)))
    again, made_again = resolve_data_dir(DataConfig(source=str(corpus_file)))
    assert first == again and made_again is False
    other, _ = resolve_data_dir(DataConfig(source=str(corpus_file), val_fraction=0.2))
    assert other != first


def test_random_windows_are_shifted_seeded_and_resumable():
    tokens = np.arange(1000, dtype=np.uint16)
    loader = RandomWindows(tokens, context=16, batch_size=4, seed=3)
    x, y = loader.next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y - x, torch.ones_like(x))
    saved = loader.state_dict()
    following = [loader.next_batch()[0] for _ in range(3)]
    again = RandomWindows(tokens, context=16, batch_size=4, seed=999)
    again.load_state_dict(saved)
    assert all(torch.equal(a, again.next_batch()[0]) for a in following)
    same_seed = RandomWindows(tokens, context=16, batch_size=4, seed=3)
    assert torch.equal(same_seed.next_batch()[0], x)
    assert int(max(loader.next_batch()[1].max() for _ in range(200))) <= 999  # never past the end
    with pytest.raises(DataError, match="fewer than model.context"):
        RandomWindows(tokens[:10], context=16, batch_size=4, seed=0)


def test_concurrent_atomic_writes_of_one_file_never_fail_or_mix(tmp_path):
    """Two tokenizer worker processes filling the shared GPT-2 cache wrote the same file at once and
    renamed each other's temporary file (FileNotFoundError in CI). Every write now has its own
    temporary name: all succeed, the file is one whole write, and no temporary file is left."""
    import threading

    from tinylm import fileio

    target = tmp_path / "encoder.json"
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for _ in range(40):
                fileio.write_bytes(target, bytes([k]) * 100_000)
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    data = target.read_bytes()
    assert len(data) == 100_000 and len(set(data)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["encoder.json"]

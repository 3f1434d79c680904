"""A source that changes while it is prepared (issue 27, item 6): every input read more than once (the
two passes of `prepare`, cached data keyed by content, fine-tuning records) is one version of its
files, hashed when first read, or a one-line error; never two versions mixed, never a meta.json or a
cache key that names other bytes than the tokens hold.

The files are changed for real, at chosen moments of the reading: from inside the stream that
`prepare` consumes (between its passes, or after its first piece), so no timing decides the outcome."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from pathlib import Path

import pytest

from dataset_files import write_parquet
from tinylm.cli import main
from tinylm.config import DataConfig
from tinylm.data import catalog, sources
from tinylm.data.prepare import META_FILE, load_split, prepare, prepared_dir_for, read_meta, resolve_data_dir
from tinylm.data.records import read_conversations, read_records
from tinylm.data.spec import read_source
from tinylm.errors import DataError
from tinylm.tokenizers import load_tokenizer

NEW_TEXT = "ĀĒĪŌŪ a line with characters the vocabulary lacks\n"


def append(path: Path, text: str = NEW_TEXT * 50) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def changing(src: sources.Source, when: str, change) -> sources.Source:
    """`src` whose stream calls `change()` (which writes the file) once: at the end of the first
    pass ("between") or after the first piece of the first pass ("during")."""
    inner, passes = src.streams["all"], []

    def stream():
        passes.append(1)
        for i, piece in enumerate(inner()):
            yield piece
            if len(passes) == 1 and when == "during" and i == 0:
                change()
        if len(passes) == 1 and when == "between":
            change()

    return dataclasses.replace(src, streams={"all": stream})


def assert_nothing_made(out: Path) -> None:
    assert not (out / META_FILE).exists()
    assert not [p.name for p in out.glob("*.bin")] + [p.name for p in out.glob(".*.tmp")]


@pytest.fixture
def text_file(tmp_path: Path, corpus_text: str) -> Path:
    path = tmp_path / "shake.txt"
    path.write_text(corpus_text * 30, encoding="utf-8")  # 1.8 MB: read in several blocks
    return path


@pytest.mark.parametrize("when", ["between", "during"])
@pytest.mark.parametrize("spec", ["char", "gpt2"])
def test_a_file_appended_to_during_preparation_is_refused(tmp_path: Path, text_file: Path, when: str,
                                                         spec: str) -> None:
    """The issue's case: lines with new characters appended while `prepare` reads (char trains its
    vocabulary in the first pass; gpt2 counts bytes for the tail split in it)."""
    src = changing(read_source(str(text_file)), when, lambda: append(text_file))
    with pytest.raises(DataError, match=r"shake\.txt changed while tinylm was reading it .*rather than mix two "
                                        r"versions of it: run the command again"):
        prepare(src, spec, tmp_path / "data")
    assert_nothing_made(tmp_path / "data")


def test_a_file_changed_after_it_was_hashed_is_refused(tmp_path: Path, text_file: Path) -> None:
    """Hashed when the source is opened (the cache key, meta.json), changed before it is read: refused,
    by size, or by modification when the size stays the same."""
    src = read_source(str(text_file))
    append(text_file)
    with pytest.raises(DataError, match="bytes when first read, now"):
        prepare(src, "char", tmp_path / "a")
    src = read_source(str(text_file))
    data = bytearray(text_file.read_bytes())
    data[100:105] = b"XXXXX"  # the same size, the modification time put back: the change time still moves
    st = text_file.stat()
    text_file.write_bytes(bytes(data))
    os.utime(text_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(DataError, match="written to since it was first read"):
        prepare(src, "char", tmp_path / "b")
    assert_nothing_made(tmp_path / "a")
    assert_nothing_made(tmp_path / "b")


def test_a_whole_read_must_find_the_hashed_bytes(text_file: Path) -> None:
    """Where the file's times cannot tell (a write in the same clock tick), a read to the end compares
    the bytes themselves with the version hashed."""
    version = sources.snapshot(text_file)
    assert "".join(sources.read_blocks(text_file, "strict", version)) == text_file.read_text(encoding="utf-8")
    other = dataclasses.replace(version, sha256="0" * 64)  # as if the first read had found other bytes
    with pytest.raises(DataError, match="sha256 000000000000... when first read, then"):
        list(sources.read_blocks(text_file, "strict", other))


def test_a_file_that_changes_while_it_is_hashed_is_refused(tmp_path: Path, text_file: Path) -> None:
    """Hashing itself reads the file: a writer appending all along is refused there (the command line,
    one line), and nothing is prepared."""
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            append(text_file, NEW_TEXT)
            time.sleep(0.001)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with pytest.raises(DataError, match="changed while tinylm was reading it"):
            for _ in range(200):  # every read while the writer runs is refused: the first one already
                read_source(str(text_file))
    finally:
        stop.set()
        thread.join()


def test_the_command_line_refuses_a_growing_file_in_one_line(tmp_path: Path, text_file: Path, capsys) -> None:
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            append(text_file, NEW_TEXT)
            time.sleep(0.001)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        rc = main(["prepare", str(text_file), "--out", str(tmp_path / "data")])
    finally:
        stop.set()
        thread.join()
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("error: ") and "changed while tinylm was reading it" in err[-1]
    assert not (tmp_path / "data" / META_FILE).exists()


def test_parquet_and_jsonl_files_are_checked_too(tmp_path: Path, corpus_text: str) -> None:
    texts = [corpus_text[i:i + 2000] for i in range(0, 60_000, 2000)]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    parquet = tmp_path / "docs.parquet"
    write_parquet(parquet, texts, row_group=3)
    for path, change in ((jsonl, lambda: append(jsonl, json.dumps({"text": NEW_TEXT}) + "\n")),
                         (parquet, lambda: write_parquet(parquet, [*texts, NEW_TEXT], row_group=3))):
        src = changing(read_source(str(path)), "between", change)
        with pytest.raises(DataError, match="changed while tinylm was reading it"):
            prepare(src, "char", tmp_path / path.stem)
        assert_nothing_made(tmp_path / path.stem)


def test_meta_and_cache_key_name_the_bytes_tokenized(tmp_path: Path, text_file: Path) -> None:
    """A preparation that succeeds records the size and sha256 of what it read, which the cache key
    is made of; data cached under the key of other bytes (what the race used to leave) is not reused."""
    data = DataConfig(source=str(text_file), tokenizer="char")
    out, made = resolve_data_dir(data)
    meta = read_meta(out)
    assert made and meta["source"]["files"]["shake.txt"] == {"bytes": text_file.stat().st_size,
                                                            "sha256": sources.snapshot(text_file).sha256}
    assert load_tokenizer(out).decode(load_split(out, "train")[:50].tolist()) == text_file.read_text()[:50]
    old_copy = tmp_path / "old.txt"
    old_copy.write_bytes(text_file.read_bytes())
    append(text_file)
    new = read_source(str(text_file))
    stale = prepared_dir_for(new, data)
    assert stale != out
    prepare(str(old_copy), "char", stale)  # the old bytes under the new key, as the race left them
    again, made_again = resolve_data_dir(data)
    assert again == stale and made_again  # prepared afresh, not reused
    assert read_meta(stale)["source"]["sha256"] == new.sha256
    assert NEW_TEXT[:5] in load_tokenizer(stale).decode(load_split(stale, "val").tolist())


def test_fine_tuning_records_changed_while_read_are_refused(tmp_path: Path) -> None:
    """Instruction records are read in one pass: a file that grows (or is rewritten) meanwhile is refused."""
    path = tmp_path / "train.jsonl"
    record = {"instruction": "Who says: to be or not to be", "output": "Hamlet"}
    path.write_text("".join(json.dumps(record) + "\n" for _ in range(40_000)))  # 3 MB: several blocks
    records = read_records(str(path))
    next(records)
    append(path, json.dumps({**record, "output": "Ophelia"}) + "\n")
    with pytest.raises(DataError, match=r"train\.jsonl changed while tinylm was reading it"):
        list(records)
    assert len(read_conversations(str(path), "instruction")) == 40_001  # unchanged since: read whole


def test_a_catalog_copy_changed_after_listing_is_refused(tmp_path: Path, corpus_text: str) -> None:
    """A dataset's local copy is listed by names, sizes and times (its cache key), then hashed when first
    read: a file changed in between is refused, not taken for the one listed."""
    copy = tmp_path / "tinyshakespeare"
    copy.mkdir()
    (copy / "input.txt").write_text(corpus_text)
    src = catalog.open_dataset("tinyshakespeare", source_dir=str(tmp_path))
    append(copy / "input.txt")
    with pytest.raises(DataError, match="since tinylm listed the dataset's files"):
        prepare(src, "char", tmp_path / "data")
    assert_nothing_made(tmp_path / "data")
    src = catalog.open_dataset("tinyshakespeare", source_dir=str(tmp_path))  # listed again: fine
    meta = read_meta(prepare(src, "char", tmp_path / "data"))
    assert meta["source"]["files"]["input.txt"] == {"bytes": (copy / "input.txt").stat().st_size,
                                                    "sha256": sources.snapshot(copy / "input.txt").sha256}

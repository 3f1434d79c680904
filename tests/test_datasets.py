"""The dataset catalog and local inputs, prepared end to end.

Each catalog dataset is built as a tiny fixture in its real file format and prepared from a local
copy (`--source-dir`). WikiText-103 is also prepared "from the network" through a fake transport
serving the same zip at its plain URL: both must give identical data directories. The catalog's
Hub datasets (TinyStories, FineWeb-Edu) are prepared through huggingface_hub against a fake Hub in
test_hub.py.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile

import numpy as np
import pytest

from dataset_files import same_data_dirs, stories, wikitext_raw, write_parquet
from tinylm.cli import main
from tinylm.config import DataConfig
from tinylm.data import catalog, load_split, read_meta, read_source, remote, resolve_data_dir
from tinylm.data.prepare import prepare
from tinylm.errors import DataError
from tinylm.tokenizers import load_tokenizer


class FakeRemote:
    """A Transport serving fixed bytes per URL and recording what was asked for."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[tuple[str, int]] = []

    def info(self, url: str) -> remote.RemoteInfo:
        return remote.RemoteInfo(len(self._get(url)), True)

    def open(self, url: str, start: int = 0):
        self.requests.append((url, start))
        return io.BytesIO(self._get(url)[start:])

    def _get(self, url: str) -> bytes:
        if url not in self.files:
            raise remote.DownloadError(f"{url}: HTTP 404 Not Found")
        return self.files[url]


@pytest.fixture
def fake_remote(no_network, monkeypatch):
    monkeypatch.delenv("TINYLM_DATA_DIR", raising=False)

    def install(files: dict[str, bytes]) -> FakeRemote:
        fake = FakeRemote(files)
        remote.set_transport(fake)
        return fake

    yield install
    remote.set_transport(None)


# --------------------------------------------------------------------------- catalog datasets


def test_wikitext103_splits_articles_and_matches_the_network_zip(tmp_path, corpus_text, fake_remote, monkeypatch):
    paras = stories(corpus_text, 40)
    splits = {"train": [(f"Article {i}", paras[i * 3:i * 3 + 3]) for i in range(10)],
              "valid": [("Valkyria Chronicles III", paras[30:33]), ("Tower Building", paras[33:36])],
              "test": [("Robert Boulter", paras[36:40])]}
    copy = tmp_path / "copy" / "wikitext103"
    copy.mkdir(parents=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for split, articles in splits.items():
            (copy / f"wiki.{split}.raw").write_text(wikitext_raw(articles), encoding="utf-8")
            z.writestr(f"wikitext-103-raw/wiki.{split}.raw", wikitext_raw(articles))

    local = prepare("wikitext103", "char", tmp_path / "local", source_dir=str(tmp_path.joinpath("copy")))
    ds = catalog.DATASETS["wikitext103"]  # the real archive's pinned size does not fit the fixture
    monkeypatch.setitem(catalog.DATASETS, "wikitext103",
                        dataclasses.replace(ds, archive=dataclasses.replace(ds.archive, size=None)))
    fake = fake_remote({ds.archive.url: buffer.getvalue()})
    network = prepare("wikitext103", "char", tmp_path / "network")
    assert [url for url, _ in fake.requests] == [ds.archive.url]
    meta = same_data_dirs(local, network)

    assert list(meta["splits"]) == ["train", "val", "test"]
    assert [meta["splits"][s]["documents"] for s in ("train", "val", "test")] == [10, 2, 1]
    tok = load_tokenizer(local)
    val_text = tok.decode(load_split(local, "val").tolist())
    articles = val_text.split("\n\n = ")
    assert val_text.startswith(" = Valkyria Chronicles III = \n \n") and "= = Section 1 = =" in val_text
    assert articles[1].startswith("Tower Building = \n")


def test_unknown_dataset_and_missing_local_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="known datasets: shakespeare, tinyshakespeare, tinystories, wikitext103"):
        read_source("tinystoriez")
    (tmp_path / "tinystories").mkdir()
    (tmp_path / "tinystories" / "TinyStoriesV2-GPT4-train.txt").write_text("a story\n")
    with pytest.raises(DataError, match="TinyStoriesV2-GPT4-valid.txt is not in .*unset TINYLM_DATA_DIR"):
        read_source("tinystories", source_dir=str(tmp_path))


def test_datasets_command_lists_the_catalog(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("shakespeare", "tinyshakespeare", "tinystories", "wikitext103", "fineweb-edu"):
        assert f"\n{name} " in out
    assert "CDLA-Sharing-1.0" in out and "train/val/test" in out
    assert main(["datasets", "wikitext103"]) == 0
    out = capsys.readouterr().out
    assert "wikitext-103-raw-v1.zip" in out and "' = Title = '" in out and "wiki.valid.raw" in out
    assert main(["datasets", "nope"]) == 1
    for name in ("shakespeare", "tinyshakespeare", "tinystories", "fineweb-edu"):  # every listed name has details
        assert main(["datasets", name]) == 0 and capsys.readouterr().out.startswith(f"{name}: ")


def test_tinyshakespeare_from_the_shared_copy(shared_data, tmp_path, monkeypatch):
    """The real file, found through TINYLM_DATA_DIR, with the char and gpt2 tokenizers."""
    monkeypatch.setenv("TINYLM_DATA_DIR", str(shared_data))
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text()
    cut = int(len(text) * 0.9)
    for spec, train_tokens in (("char", cut), ("gpt2", None)):
        out = prepare("tinyshakespeare", spec, tmp_path / spec)
        meta, tok = read_meta(out), load_tokenizer(out)
        pinned = catalog.DATASETS["tinyshakespeare"].splits["all"][0].sha256
        assert meta["source"]["files"]["input.txt"]["sha256"] == pinned
        assert tok.decode(load_split(out, "val").tolist()).removesuffix("<|endoftext|>") == text[cut:]
        if train_tokens:
            assert meta["splits"]["train"]["tokens"] == train_tokens
        else:
            assert 300_000 < meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"] < 350_000


# --------------------------------------------------------------------------- local inputs


def test_jsonl_parquet_and_folders_with_a_text_field(tmp_path, corpus_text):
    docs = stories(corpus_text, 30)
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.jsonl").write_text("".join(json.dumps({"body": d, "n": i}) + "\n\n" for i, d in enumerate(docs[:10])))
    write_parquet(folder / "b.parquet", docs[10:20], row_group=3)
    table = folder / "b.parquet"
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pq.read_table(table).rename_columns(["id", "body", "score"]), table)
    (folder / "c.txt").write_text("<|endoftext|>".join(docs[20:]))

    src = read_source(str(folder), text_field="body")
    assert src.documents() == docs
    out = prepare(str(folder), "gpt2", tmp_path / "data", text_field="body")
    meta = read_meta(out)
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 31  # one cut in two
    assert sorted(meta["source"]["files"]) == ["a.jsonl", "b.parquet", "c.txt"]


def test_jsonl_and_parquet_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"content": "no text field"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 2 has no 'text' field \(it has: content\).*--text-field"):
        read_source(str(bad)).documents()
    bad.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(DataError, match="bad.jsonl line 2 is not valid JSON"):
        read_source(str(bad)).documents()
    write_parquet(tmp_path / "t.parquet", ["some text"] * 3, row_group=2)
    with pytest.raises(DataError, match=r"t.parquet has no column 'content' \(it has: id, text, score\)"):
        read_source(str(tmp_path / "t.parquet"), text_field="content").documents()
    (tmp_path / "fake.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="fake.parquet is not a readable Parquet file"):
        read_source(str(tmp_path / "fake.parquet")).documents()


def test_shuffle_split_is_seeded_and_keeps_documents_whole(tmp_path, corpus_text):
    docs = stories(corpus_text, 300)
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))

    def val_docs(seed: int, name: str) -> list[str]:
        out = prepare(str(tmp_path / "docs.jsonl"), "gpt2", tmp_path / name, 0.1, split="shuffle", split_seed=seed)
        tok = load_tokenizer(out)
        ids = load_split(out, "val").tolist()
        return [tok.decode(d) for d in np.split(ids, np.flatnonzero(np.array(ids) == tok.eot_id) + 1) if len(d)]

    first, again, other = val_docs(1, "a"), val_docs(1, "b"), val_docs(2, "c")
    assert first == again and first != other
    assert 15 <= len(first) <= 45  # about 10% of 300
    assert all(d.removesuffix("<|endoftext|>") in docs for d in first)  # whole documents
    assert [d for d in docs if d + "<|endoftext|>" in first] != docs[-len(first):]  # not the tail


def test_token_cap_on_a_source_with_its_own_validation_split(tmp_path, corpus_text):
    copy = tmp_path / "tinystories"
    copy.mkdir()
    (copy / "TinyStoriesV2-GPT4-train.txt").write_text("\n<|endoftext|>\n".join(stories(corpus_text, 50)))
    (copy / "TinyStoriesV2-GPT4-valid.txt").write_text("\n<|endoftext|>\n".join(stories(corpus_text, 5, 60)))
    capped = read_meta(prepare("tinystories", "gpt2", tmp_path / "a", max_tokens=500, source_dir=str(tmp_path)))
    whole = read_meta(prepare("tinystories", "gpt2", tmp_path / "b", source_dir=str(tmp_path)))
    assert capped["splits"]["train"]["tokens"] == 500 < whole["splits"]["train"]["tokens"]
    assert capped["splits"]["val"] == whole["splits"]["val"]  # the source's own validation split stays whole


@pytest.mark.parametrize("spec", ["gpt2", "bpe:300", "word", "char"])
def test_long_documents_in_pieces_encode_like_the_whole(tmp_path, corpus_text, monkeypatch, spec):
    """Documents longer than PIECE_CHARS reach the tokenizer in pieces: the ids must not change."""
    from tinylm.data import sources

    text = corpus_text[:20_000]
    path = tmp_path / "doc.txt"
    path.write_text(f"{text}\n<|endoftext|>\n{text[5000:]}")
    monkeypatch.setattr(sources, "PIECE_CHARS", 700)
    pieces = list(sources.read_text(path))
    assert len(pieces) > 20 and sum(last for _, last in pieces) == 2
    out = prepare(str(path), spec, tmp_path / "data", 0.5)
    tok = load_tokenizer(out)
    cut = len(text + text[5000:]) // 2  # the tail split's cut, inside the first document (ASCII: chars = bytes)
    eot, sep = ([tok.eot_id], []) if tok.eot_id is not None else ([], tok.encode("\n\n"))
    bos = [tok.bos_id] if tok.bos_id is not None else []  # the word tokenizer opens documents with <sos>
    assert load_split(out, "train").tolist() == bos + tok.encode(text[:cut]) + eot
    assert load_split(out, "val").tolist() == (bos + tok.encode(text[cut:]) + eot + sep + bos + tok.encode(text[5000:])
                                               + eot)


def test_worker_processes_write_what_one_process_writes(tmp_path, corpus_text, monkeypatch):
    import tinylm.data.prepare as prepare_module

    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 5000)  # many batches in flight
    (tmp_path / "docs.txt").write_text("<|endoftext|>".join(stories(corpus_text, 200)))
    one = prepare(str(tmp_path / "docs.txt"), "gpt2", tmp_path / "one", workers=1)
    two = prepare(str(tmp_path / "docs.txt"), "gpt2", tmp_path / "two", workers=2)
    same_data_dirs(one, two)


def test_catalog_dataset_prepares_on_the_fly_for_training(tmp_path, corpus_text, monkeypatch):
    copy = tmp_path / "tinystories"
    copy.mkdir()
    (copy / "TinyStoriesV2-GPT4-train.txt").write_text("\n<|endoftext|>\n".join(stories(corpus_text, 20)))
    (copy / "TinyStoriesV2-GPT4-valid.txt").write_text("\n<|endoftext|>\n".join(stories(corpus_text, 3, 30)))
    monkeypatch.setenv("TINYLM_DATA_DIR", str(tmp_path))
    first, made = resolve_data_dir(DataConfig(source="tinystories", tokenizer="gpt2"))
    again, made_again = resolve_data_dir(DataConfig(source="tinystories", tokenizer="gpt2"))
    assert made and not made_again and first == again
    capped, _ = resolve_data_dir(DataConfig(source="tinystories", tokenizer="gpt2", max_tokens=100))
    assert capped != first and read_meta(capped)["splits"]["train"]["tokens"] == 100

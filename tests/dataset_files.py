"""Small files in the real formats of the catalog's datasets, for tests: TinyStories' stories,
WikiText's raw articles and FineWeb-Edu's Parquet shards; and a comparison of data directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinylm.data import read_meta


def stories(text: str, n: int, offset: int = 0) -> list[str]:
    paragraphs = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 40]
    return [paragraphs[(offset + i) % len(paragraphs)] + f"\nThe end of story {offset + i}." for i in range(n)]


def wikitext_raw(articles: list[tuple[str, list[str]]]) -> str:
    out = [" \n"]
    for title, paragraphs in articles:
        out += [f" = {title} = \n", " \n"]
        for i, para in enumerate(paragraphs):
            if i == 1:
                out += [" \n", f" = = Section {i} = = \n", " \n"]
            out.append(" " + para.replace("\n", " ") + " \n")
        out.append(" \n")
    return "".join(out)


def write_parquet(path: Path, texts: list[str], row_group: int) -> bytes:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"id": [f"<urn:{i}>" for i in range(len(texts))], "text": texts,
                      "score": [3.0 + i % 2 for i in range(len(texts))]})
    pq.write_table(table, path, row_group_size=row_group)
    return path.read_bytes()


def same_data_dirs(a: Path, b: Path) -> dict:
    """Assert two prepared data directories are identical but for their timestamps; their meta.json."""
    meta_a, meta_b = read_meta(a), read_meta(b)
    for meta in (meta_a, meta_b):
        meta.pop("created"), meta.pop("seconds")
    assert meta_a == meta_b
    for split in meta_a["splits"]:
        assert (a / f"{split}.bin").read_bytes() == (b / f"{split}.bin").read_bytes()
    assert (a / "tokenizer.tinylm.json").read_bytes() == (b / "tokenizer.tinylm.json").read_bytes()
    return meta_a

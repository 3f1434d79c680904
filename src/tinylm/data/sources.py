"""Text sources: a .txt file, a folder of .txt files, or a corpus bundled with tinylm.

Each source yields a list of documents (one per file, or per work for bundled corpora) and a
sha256 of its raw bytes, which names the prepared data in the cache and in meta.json.
"""

from __future__ import annotations

import hashlib
import json
import lzma
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tinylm.console import warn
from tinylm.errors import DataError

DOC_SEPARATOR = "<|endoftext|>"  # how bundled corpora mark document boundaries (a line of its own)
BUILTIN = {"shakespeare": "shakespeare.txt.xz"}


@dataclass
class Source:
    name: str  # what the user asked for, for messages and meta.json
    documents: list[str]
    sha256: str

    @property
    def characters(self) -> int:
        return sum(len(d) for d in self.documents)


def _decode(data: bytes, where: str, errors: str = "strict") -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if errors == "replace":
            text = data.decode("utf-8", errors="replace")
            warn(f"{where} is not valid UTF-8 (first bad byte at offset {e.start}); invalid bytes were "
                 "replaced by U+FFFD")
            return text
        raise DataError(f"{where} is not valid UTF-8 (byte offset {e.start}: {data[e.start:e.start + 4]!r}); "
                        "convert it to UTF-8, or pass --errors replace to substitute U+FFFD") from None


def builtin_corpus_path(name: str) -> Path:
    return Path(str(resources.files("tinylm.data") / "corpora" / BUILTIN[name]))


def builtin_provenance(name: str) -> dict:
    path = builtin_corpus_path(name).with_name(f"{name}.provenance.json")
    return json.loads(path.read_text(encoding="utf-8"))


def _read_builtin(name: str) -> Source:
    raw = builtin_corpus_path(name).read_bytes()
    text = _decode(lzma.decompress(raw), f"built-in corpus {name}")
    docs = [d.strip("\n") for d in text.split(f"\n{DOC_SEPARATOR}\n")]
    return Source(name, [d for d in docs if d], hashlib.sha256(raw).hexdigest())


def _read_files(files: list[Path], name: str, errors: str) -> Source:
    digest = hashlib.sha256()
    docs = []
    for path in files:
        data = path.read_bytes()
        digest.update(f"{path.name}\0{len(data)}\0".encode())
        digest.update(data)
        text = _decode(data, str(path), errors)
        if text.strip():
            docs.append(text)
    if not docs:
        what = "is empty" if len(files) == 1 else "holds only empty text files"
        raise DataError(f"{name} {what}; give a corpus with some text in it")
    return Source(name, docs, digest.hexdigest())


def read_source(spec: str, errors: str = "strict") -> Source:
    """Read a text file, a folder of .txt files (recursively, in name order) or a built-in corpus.
    `errors="replace"` turns invalid UTF-8 into U+FFFD instead of stopping."""
    path = Path(spec).expanduser()
    if path.is_file():
        return _read_files([path], str(path), errors)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"folder {path} contains no .txt files")
        return _read_files(files, str(path), errors)
    if spec in BUILTIN:
        return _read_builtin(spec)
    raise DataError(f"{spec}: no such file or folder, and not a built-in corpus "
                    f"(built-in: {', '.join(BUILTIN)})")


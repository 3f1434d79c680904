"""Text sources: where documents come from, read as streams so no corpus has to fit in memory.

A `Source` has one or more named document streams: `"all"` for a corpus with no split of its
own (preparation then holds out a tail or a seeded shuffle), or `"train"`, `"val"` (and
`"test"`) for datasets that ship their own splits. A stream yields `(text, ends_document)`
pieces: long documents arrive in pieces of about a megabyte, cut only where every tokenizer
has a boundary (`tokenizers.base.safe_chunks`), so encoding pieces one by one gives the ids of
the whole document.

    .txt  (documents separated by <|endoftext|>) ─┐
    .jsonl (one record per line, `text_field`)   ─┼─► read_file ─► Source(streams, key, files)
    .parquet (the `text_field` column)           ─┤
    a folder of them / the bundled corpus        ─┘

This module holds the readers and the Source type only; it imports no other data module. The
named datasets are built on these readers in catalog.py, Hugging Face Hub datasets (`hf:...`)
in hub.py, and spec.py turns what the user typed into one of them (`read_source`).
"""

from __future__ import annotations

import dataclasses
import json
import lzma
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

from tinylm import fileio
from tinylm.console import warn
from tinylm.errors import DataError

DOC_SEPARATOR = "<|endoftext|>"  # end-of-document marker inside .txt files
BUILTIN = {"shakespeare": "shakespeare.txt.xz"}
SUFFIXES = (".txt", ".jsonl", ".parquet")
PIECE_CHARS = 1 << 20  # long documents are handed to the tokenizer in pieces of about this size

Piece = tuple[str, bool]  # (text, whether it ends a document)
Stream = Callable[[], Iterator[Piece]]  # a re-readable stream of pieces


@dataclass
class Source:
    name: str  # what the user asked for, for messages and meta.json
    streams: dict[str, Stream]  # {"all": ...} or {"train": ..., "val": ..., ...}
    key: str  # identifies the input for the cache of prepared data (a content hash for local files)
    size: int | None = None  # bytes of raw input, when known (progress, choosing worker processes)
    files: dict[str, dict] = field(default_factory=dict)  # name -> {"bytes", "sha256"} of the files read
    max_tokens: int = 0  # a default cap on training tokens (streamed web-scale datasets)
    revision: str = ""  # the commit read, for sources from a Hub repository (recorded in meta.json)

    @property
    def sha256(self) -> str:
        """One hash of the raw files read (name, size and sha256 of each), recorded in meta.json."""
        listing = [(name, f["bytes"], f["sha256"]) for name, f in sorted(self.files.items())]
        return fileio.sha256_bytes(json.dumps(listing).encode())

    @property
    def has_splits(self) -> bool:
        return "all" not in self.streams

    def training_split(self) -> Source:
        """The training stream alone, as a corpus without splits (preparation then holds
        validation out of it, by tail or shuffle, instead of using the source's own)."""
        if not self.has_splits:
            return self
        return dataclasses.replace(self, streams={"all": self.streams["train"]}, key=cache_key(self.key, "train only"))

    def documents(self, split: str = "all") -> list[str]:
        """The whole documents of one stream, in memory (for small inputs such as `eval --text`)."""
        docs, parts = [], []
        for text, last in self.streams[split]():
            parts.append(text)
            if last:
                docs.append("".join(parts))
                parts.clear()
        return docs


# --------------------------------------------------------------------------- documents from text


_SAFE_CUT = re.compile(r"(?<=\S)\n(?=\S)")  # where tokenizers.base.safe_chunks may cut


class _Document:
    """Collects a document's text, emitting pieces of about PIECE_CHARS at safe line breaks."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.started = False  # a piece of this document was already emitted

    def add(self, text: str) -> Iterator[Piece]:
        self.parts.append(text)
        self.size += len(text)
        if self.size < PIECE_CHARS:
            return
        joined, start = "".join(self.parts), 0
        while len(joined) - start >= PIECE_CHARS:
            cut = _SAFE_CUT.search(joined, start + PIECE_CHARS)
            if cut is None:  # no safe place yet: keep collecting
                break
            yield joined[start:cut.end()], False
            start, self.started = cut.end(), True
        self.parts, self.size = [joined[start:]], len(joined) - start

    def end(self, strip: str = "") -> Iterator[Piece]:
        text = "".join(self.parts).rstrip(strip) if strip else "".join(self.parts)
        if self.started or text.strip():  # whitespace-only documents are dropped
            yield text, True
        self.parts, self.size, self.started = [], 0, False


def _blocks(path: Path, errors: str, size: int = 1 << 20) -> Iterator[str]:
    """The decoded text of a UTF-8 file in blocks of about `size` bytes that end at line breaks (a
    leading byte order mark, as Windows editors write, dropped). Invalid UTF-8 is an error naming the
    byte offset, or with errors="replace" becomes U+FFFD (with one warning)."""
    offset, carry, warned = 0, b"", False
    with open(path, "rb") as f:
        while True:
            data = f.read(size)
            if data:
                data, carry = carry + data, b""
                end = data.rfind(b"\n") + 1
                if end == 0:  # no line break yet: read on
                    carry = data
                    continue
                block, carry = data[:end], data[end:]
            elif carry:
                block, carry = carry, b""
            else:
                return
            if offset == 0 and block.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark is not text
                block, offset = block[3:], 3
            try:
                yield block.decode("utf-8")
            except UnicodeDecodeError as e:
                if errors != "replace":
                    raise DataError(f"{path} is not valid UTF-8 (byte offset {offset + e.start}: "
                                    f"{block[e.start:e.start + 4]!r}); convert it to UTF-8, or pass --errors "
                                    "replace to substitute U+FFFD") from None
                if not warned:
                    warn(f"{path} is not valid UTF-8 (first bad byte at offset {offset + e.start}); invalid bytes "
                         "were replaced by U+FFFD")
                    warned = True
                yield block.decode("utf-8", errors="replace")
            offset += len(block)


def _lines(path: Path, errors: str) -> Iterator[str]:
    """Lines split at "\n" only (JSON text may hold other Unicode line separators), ends kept."""
    for block in _blocks(path, errors):
        *lines, last = block.split("\n")
        for line in lines:
            yield line + "\n"
        if last:
            yield last


def read_text(path: Path, errors: str = "strict") -> Iterator[Piece]:
    """Documents of a text file separated by `<|endoftext|>`; line breaks next to a separator
    belong to it. A file without separators is one document, verbatim."""
    doc = _Document()
    after_separator = False  # the current document follows a separator: drop its leading line breaks
    for block in _blocks(path, errors):
        first, *rest = block.split(DOC_SEPARATOR)
        for i, part in enumerate([first, *rest]):
            if i:
                yield from doc.end(strip="\r\n")
                after_separator = True
            if after_separator and not doc.parts:
                part = part.lstrip("\r\n")
            if part:
                yield from doc.add(part)
    yield from doc.end()


def json_lines(path: Path, errors: str = "strict") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON-lines file; a bad line is an
    error naming its number."""
    for number, line in enumerate(_lines(path, errors), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise DataError(f"{path} line {number} is not valid JSON ({e}); fix or remove the line") from None
        if not isinstance(record, dict):
            raise DataError(f"{path} line {number} is not a JSON object")
        yield number, record


def record_documents(texts: Iterable[object], text_field: str, where: str) -> Iterator[Piece]:
    """One document per record text (JSONL lines, Parquet rows, Hub records): blank ones are
    skipped (so are nulls), anything but a string is an error naming `where` it came from."""
    for text in texts:
        if text is None:
            continue
        if not isinstance(text, str):
            raise DataError(f"{where}: field {text_field!r} holds {type(text).__name__}, not text; "
                            "name the text field with --text-field")
        if text.strip():
            yield text, True


def read_jsonl(path: Path, text_field: str, errors: str = "strict") -> Iterator[Piece]:
    """One document per JSON line, from the record's `text_field`; blank lines are skipped."""
    for number, record in json_lines(path, errors):
        if text_field not in record:
            raise DataError(f"{path} line {number} has no {text_field!r} field (it has: {', '.join(record)}); "
                            "name the text field with --text-field")
        yield from record_documents([record[text_field]], text_field, f"{path} line {number}")


def _parquet_module():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet needs pyarrow: pip install 'tinylm[parquet]'") from None
    return pq


def read_parquet(file: Path | IO[bytes], text_field: str, name: str = "") -> Iterator[Piece]:
    """One document per row of the `text_field` column, read a record batch at a time."""
    pq = _parquet_module()
    name = name or str(file)
    try:
        table = pq.ParquetFile(file, pre_buffer=False)  # fetch row groups one by one, as needed
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for files that are not Parquet
        raise DataError(f"{name} is not a readable Parquet file ({e})") from None
    columns = table.schema_arrow.names
    if text_field not in columns:
        raise DataError(f"{name} has no column {text_field!r} (it has: {', '.join(columns)}); "
                        "name the text column with --text-field")
    for batch in table.iter_batches(batch_size=256, columns=[text_field]):
        yield from record_documents(batch.column(0).to_pylist(), text_field, name)


def read_file(path: Path, text_field: str = "text", errors: str = "strict") -> Iterator[Piece]:
    if path.suffix == ".jsonl":
        return read_jsonl(path, text_field, errors)
    if path.suffix == ".parquet":
        return read_parquet(path, text_field)
    return read_text(path, errors)


# --------------------------------------------------------------------------- sources


def chain(*streams: Stream) -> Stream:
    return lambda: (piece for stream in streams for piece in stream())


def describe_files(files: Iterable[Path], root: Path | None = None) -> dict[str, dict]:
    """Size and sha256 of each file, by name (relative to `root`)."""
    return {str(p.relative_to(root)) if root else p.name: {"bytes": p.stat().st_size, "sha256": fileio.sha256_file(p)}
            for p in files}


def cache_key(*parts: object) -> str:
    return fileio.sha256_bytes(json.dumps(parts, sort_keys=True, default=str).encode())


def local_source(spec: str, text_field: str = "text", errors: str = "strict") -> Source:
    """A .txt, .jsonl or .parquet file, or a folder of them (recursively, in path order)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"folder {path} contains no .txt, .jsonl or .parquet files")
        described = describe_files(files, path)
    else:
        files = [path]
        described = describe_files(files)
    size = sum(f["bytes"] for f in described.values())
    if size == 0:
        raise DataError(f"{path} {'is empty' if path.is_file() else 'holds only empty files'}; "
                        "give a corpus with some text in it")
    stream = chain(*(lambda p=p: read_file(p, text_field, errors) for p in files))
    uses_field = any(p.suffix != ".txt" for p in files)
    key = cache_key(sorted(described.items()), text_field if uses_field else None)
    return Source(str(path), {"all": stream}, key, size, described)


def builtin_corpus_path(name: str) -> Path:
    return Path(str(resources.files("tinylm.data") / "corpora" / BUILTIN[name]))


def builtin_provenance(name: str) -> dict:
    path = builtin_corpus_path(name).with_name(f"{name}.provenance.json")
    return json.loads(path.read_text(encoding="utf-8"))


def builtin_source(name: str) -> Source:
    """A corpus shipped inside the package (small; read whole): works separated by
    `<|endoftext|>` lines, each stripped of surrounding blank lines."""
    path = builtin_corpus_path(name)
    raw = path.read_bytes()
    text = lzma.decompress(raw).decode("utf-8")
    docs = [d.strip("\n") for d in re.split(rf"\n{re.escape(DOC_SEPARATOR)}\n", text)]
    docs = [d for d in docs if d]
    files = {path.name: {"bytes": len(raw), "sha256": fileio.sha256_bytes(raw)}}
    return Source(name, {"all": lambda: ((d, True) for d in docs)}, files[path.name]["sha256"], len(text), files)

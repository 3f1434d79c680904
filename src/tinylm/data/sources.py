"""Text sources: where documents come from, read as streams so no corpus has to fit in memory.

A `Source` has one or more named document streams: `"all"` for a corpus with no split of its
own (preparation then holds out a tail or a seeded shuffle), or `"train"`, `"val"` (and
`"test"`) for datasets that ship their own splits. A stream yields `(text, ends_document)`
pieces: long documents arrive in pieces of at most PIECE_CHARS (about a megabyte) cut anywhere;
whoever encodes them re-cuts them where its tokenizer allows (`tokenizers.base.PieceCutter`), so
encoding pieces one by one gives the ids of the whole document.

    file ─► snapshot (size, sha256: FileVersion) ─► blocks of ~1 MB ending at LF, else CR, else
            between characters, the file checked against its version at every read
    .txt  (documents separated by <|endoftext|>) ─┐
    .jsonl (one record per line, `text_field`;   ─┼─► read_file ─► Source(streams, key, files, versions)
            a long line streamed: _StreamedRecord)│
    .parquet (the `text_field` column, long cells ┤
            decoded from the Arrow buffer)        │
    a folder of them / the bundled corpus        ─┘

Memory is bounded by the block and piece sizes whatever the line breaks (a Parquet value, read
whole by pyarrow, excepted), and a source read twice reads one version of its files or raises.

This module holds the readers and the Source type only; it imports no other data module. The
named datasets are built on these readers in catalog.py, Hugging Face Hub datasets (`hf:...`)
in hub.py, and spec.py turns what the user typed into one of them (`read_source`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import lzma
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

import numpy as np

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
    versions: dict[str, FileVersion] = field(default_factory=dict)  # path -> the version of each local file read

    def check(self) -> None:
        """A DataError if a local file of this source has changed since it was hashed (after a read
        that may have stopped early: a read to the end checks the bytes themselves)."""
        for version in list(self.versions.values()):
            version.check()

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


# --------------------------------------------------------------------------- file versions


BLOCK_BYTES = 1 << 20  # files are read in blocks of about this many bytes


def _stamp(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What changes when a file is written or replaced: device, inode, size, mtime and ctime."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def changed_error(path: str | Path, what: str) -> DataError:
    """The error for a file that changed while it was read (`what` says how)."""
    return DataError(f"{path} changed while tinylm was reading it ({what}); tinylm stopped rather than mix two "
                     "versions of it: run the command again once whatever writes it has finished (or give it a copy "
                     "that nothing writes to)")


@dataclass(frozen=True)
class FileVersion:
    """A file as it was when it was hashed: every later read of it must find these bytes, so a source
    read more than once (preparation reads it twice) is one version of its files, or an error."""

    path: str
    size: int
    sha256: str
    stamp: tuple[int, int, int, int, int]

    def check(self, st: os.stat_result | None = None) -> None:
        """A DataError unless the file (or the open file `st` describes) is still this version."""
        if st is None:
            try:
                st = os.stat(self.path)
            except OSError:
                raise changed_error(self.path, "it is gone") from None
        if _stamp(st) == self.stamp:
            return
        if st.st_size != self.size:
            raise changed_error(self.path, f"it was {self.size:,} bytes when first read, now {st.st_size:,}")
        if (st.st_dev, st.st_ino) != self.stamp[:2]:
            raise changed_error(self.path, "another file has replaced it")
        raise changed_error(self.path, "it was written to since it was first read")

    def check_read(self, size: int, sha256: str) -> None:
        """A DataError unless a whole read of the file gave this version's bytes."""
        if size != self.size or sha256 != self.sha256:
            raise changed_error(self.path, f"it was {self.size:,} bytes with sha256 {self.sha256[:12]}... when first "
                                           f"read, then {size:,} bytes with sha256 {sha256[:12]}...")


def snapshot(path: str | Path) -> FileVersion:
    """The version of a file: its size and sha256, read once (an error if it changes meanwhile)."""
    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        digest, size = hashlib.sha256(), 0
        while block := f.read(BLOCK_BYTES):
            digest.update(block)
            size += len(block)
        after = os.fstat(f.fileno())
    if _stamp(before) != _stamp(after) or size != after.st_size:
        raise changed_error(path, f"{before.st_size:,} bytes when opened, {size:,} read")
    return FileVersion(str(path), size, digest.hexdigest(), _stamp(after))


# --------------------------------------------------------------------------- documents from text


class DocumentSplitter:
    """Collects one document's text and gives it out in pieces of PIECE_CHARS / 2 to PIECE_CHARS (cut anywhere:
    a consumer re-cuts them where its tokenizer allows, `tokenizers.base.PieceCutter`), the last one
    ending the document. Line breaks at the end of what is held stay held (a separator may strip
    them). A document with no character but whitespace is dropped: it is held until its first
    other character."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.started = False  # a piece of this document was already given out
        self.has_text = False  # it holds a character other than whitespace

    @property
    def empty(self) -> bool:
        return not self.parts and not self.started

    def add(self, text: str) -> Iterator[Piece]:
        if not text:
            return
        self.parts.append(text)
        self.size += len(text)
        self.has_text = self.has_text or not text.isspace()
        if not self.has_text or self.size < PIECE_CHARS // 2:  # (a file's blocks come about one to a piece)
            return
        joined = "".join(self.parts)
        body = len(joined.rstrip("\r\n"))
        end = body if body % PIECE_CHARS >= PIECE_CHARS // 2 else body - body % PIECE_CHARS
        for start in range(0, end, PIECE_CHARS):
            yield joined[start:min(start + PIECE_CHARS, end)], False
            self.started = True
        self.parts, self.size = [joined[end:]], len(joined) - end

    def end(self, strip: str = "") -> Iterator[Piece]:
        text = "".join(self.parts)
        if strip:
            text = text.rstrip(strip)
        if self.has_text:
            yield text, True
        self.parts, self.size, self.started, self.has_text = [], 0, False, False


def _utf8_end(data: bytes | memoryview) -> int:
    """len(data), less an incomplete UTF-8 sequence at its end (a place to cut between characters)."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        byte = data[n - back]
        if byte & 0xC0 != 0x80:  # ASCII or the lead byte of a sequence
            need = 1 if byte < 0xC0 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4 if byte < 0xF8 else 1
            return n if back >= need else n - back
    return n  # only continuation bytes: invalid wherever it is cut


def _block_end(data: bytes) -> int:
    """Where a block of a file may end: after its last line break ("\n", else "\r"), else between
    two characters (a line longer than the block: text with no line breaks at all)."""
    end = data.rfind(b"\n") + 1 or data.rfind(b"\r") + 1
    return end or _utf8_end(data)


def read_blocks(path: Path, errors: str, version: FileVersion | None = None, size: int = 0) -> Iterator[str]:
    """The decoded text of a UTF-8 file in blocks of about `size` bytes (at most 2 * `size`) that end
    at line breaks where the text has any, else between characters (a leading byte order mark, as
    Windows editors write, dropped). Invalid UTF-8 is an error naming the byte offset, or with
    errors="replace" becomes U+FFFD (with one warning). The file must stay as it was while it is
    read (a DataError otherwise), and be `version` when one is given."""
    offset, carry, warned, read, size = 0, b"", False, 0, size or BLOCK_BYTES
    digest = hashlib.sha256() if version is not None else None
    with open(path, "rb") as f:
        opened = os.fstat(f.fileno())
        if version is not None:
            version.check(opened)
        while True:
            data = f.read(size)
            if data:
                read += len(data)
                if digest is not None:
                    digest.update(data)
                if read > opened.st_size:
                    raise changed_error(path, f"it was {opened.st_size:,} bytes when opened, then more")
                data, carry = carry + data, b""
                end = _block_end(data)
                block, carry = data[:end], data[end:]
                if not block:  # a few bytes of one character so far: read on
                    carry = data
                    continue
            elif carry:
                block, carry = carry, b""
            else:
                break
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
        if _stamp(os.fstat(f.fileno())) != _stamp(opened) or read != opened.st_size:
            raise changed_error(path, f"{opened.st_size:,} bytes when opened, {read:,} read")
    if version is not None and digest is not None:
        version.check_read(read, digest.hexdigest())


def _line_parts(path: Path, errors: str, version: FileVersion | None = None) -> Iterator[tuple[str, bool]]:
    """(text, whether it ends a line) in file order: lines split at "\n" only (JSON text may hold
    other Unicode line separators), ends kept; a line longer than a block comes in several parts."""
    for block in read_blocks(path, errors, version):
        *lines, last = block.split("\n")
        for line in lines:
            yield line + "\n", True
        if last:
            yield last, False


def _lines(path: Path, errors: str, version: FileVersion | None = None) -> Iterator[str]:
    """The lines of a file, whole (see `_line_parts`)."""
    parts: list[str] = []
    for part, ends in _line_parts(path, errors, version):
        parts.append(part)
        if ends:
            yield "".join(parts)
            parts.clear()
    if parts:
        yield "".join(parts)


def _separator_start(text: str) -> int:
    """How many characters at the end of `text` may begin a document separator cut by a block end."""
    for k in range(min(len(DOC_SEPARATOR) - 1, len(text)), 0, -1):
        if text.endswith(DOC_SEPARATOR[:k]):
            return k
    return 0


def read_text(path: Path, errors: str = "strict", version: FileVersion | None = None) -> Iterator[Piece]:
    """Documents of a text file separated by `<|endoftext|>`; line breaks next to a separator
    belong to it. A file without separators is one document, verbatim."""
    doc = DocumentSplitter()
    after_separator = False  # the current document follows a separator: drop its leading line breaks
    held = ""  # the end of the last block, when it may be the start of a separator
    for block in read_blocks(path, errors, version):
        block, held = held + block, ""
        k = _separator_start(block)
        if k:
            block, held = block[:-k], block[-k:]
        first, *rest = block.split(DOC_SEPARATOR)
        for i, part in enumerate([first, *rest]):
            if i:
                yield from doc.end(strip="\r\n")
                after_separator = True
            if after_separator and doc.empty:
                part = part.lstrip("\r\n")
            yield from doc.add(part)
    yield from doc.add(held)
    yield from doc.end()


def _parse_line(path: Path, number: int, line: str) -> dict | None:
    """The object on one JSON-lines line (None for a blank line); a bad line is an error naming it."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except ValueError as e:
        raise DataError(f"{path} line {number} is not valid JSON ({e}); fix or remove the line") from None
    if not isinstance(record, dict):
        raise DataError(f"{path} line {number} is not a JSON object")
    return record


def json_lines(path: Path, errors: str = "strict", version: FileVersion | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON-lines file; a bad line is an
    error naming its number."""
    for number, line in enumerate(_lines(path, errors, version), 1):
        record = _parse_line(path, number, line)
        if record is not None:
            yield number, record


def _document_pieces(text: str) -> Iterator[Piece]:
    """A document already in memory, in pieces of PIECE_CHARS (so what follows holds little more)."""
    for start in range(0, len(text), PIECE_CHARS):
        yield text[start:start + PIECE_CHARS], start + PIECE_CHARS >= len(text)


def record_documents(texts: Iterable[object], text_field: str, where: str) -> Iterator[Piece]:
    """One document per record text (JSONL lines, Parquet rows, Hub records): blank ones are
    skipped (so are nulls), anything but a string is an error naming `where` it came from."""
    for text in texts:
        if text is None:
            continue
        if not isinstance(text, str):
            raise DataError(f"{where}: field {text_field!r} holds {type(text).__name__}, not text; "
                            "name the text field with --text-field")
        if text and not text.isspace():
            yield from _document_pieces(text)


def _missing_field(where: str, text_field: str, record: dict) -> DataError:
    return DataError(f"{where} has no {text_field!r} field (it has: {', '.join(record)}); "
                     "name the text field with --text-field")


def _record_text(path: Path, number: int, line: str, text_field: str) -> Iterator[Piece]:
    record = _parse_line(path, number, line)
    if record is None:
        return
    if text_field not in record:
        raise _missing_field(f"{path} line {number}", text_field, record)
    yield from record_documents([record[text_field]], text_field, f"{path} line {number}")


_STRING_BODY = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)  # JSON string content, up to a quote
_STRUCTURE = re.compile(r"[{}\[\],:]")
_HIGH_SURROGATE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}")
LONG_STRING = 1 << 16  # in a streamed record, longer strings are decoded as they come, not kept


def _escape_start(raw: str, j: int) -> bool:
    """Whether the backslash at raw[j] begins an escape (an even number of backslashes before it)."""
    k = j
    while k > 0 and raw[k - 1] == "\\":
        k -= 1
    return (j - k) % 2 == 0


def _decodable_end(raw: str) -> int:
    """The longest prefix of raw JSON string content (starting outside an escape) that decodes on
    its own as within the whole: not ending inside an escape, nor after the first half of a
    surrogate pair (\\ud83d\\ude00 is one character)."""
    cut = len(raw)
    while True:
        j = raw.rfind("\\", max(0, cut - 6), cut)
        while j >= 0 and not _escape_start(raw, j):
            j = raw.rfind("\\", max(0, cut - 6), j)
        if j < 0 or (cut - j >= 2 and raw[j + 1] != "u") or (cut - j == 6 and not _HIGH_SURROGATE.match(raw, j)):
            return cut
        cut = j


class _StreamedRecord:
    """A JSON-lines record too long to hold, read as it comes: the string of its top-level
    `text_field` is decoded as it arrives and given out in pieces, every other long string is
    decoded (so checked) and dropped, and the rest of the record with those strings emptied (its
    skeleton) is parsed at the end, so a bad record is the error a whole-line read gives."""

    def __init__(self, path: Path, number: int, text_field: str):
        self.path, self.number, self.field = path, number, text_field
        self.where = f"{path} line {number}"
        self.skeleton: list[str] = []
        self.rest = ""  # a backslash at the end of what came, whose escape continues in the next part
        self.depth = 0
        self.top = ""  # the record's first bracket ("{" for an object)
        self.expect_key = False  # at depth 1 of an object, the next string is a key
        self.key: str | None = None  # the last key at depth 1
        self.string: list[str] | None = None  # raw content of a short string being read
        self.length = 0  # its length so far
        self.is_key = False
        self.mode = ""  # inside a long string: "text" (the record's text) or "drop"
        self.raw = ""  # raw content of a long string not decoded yet
        self.doc = DocumentSplitter()
        self.fields = 0  # how many times the text field is a key at depth 1
        self.streamed = False

    def _structure(self, segment: str) -> None:
        for match in _STRUCTURE.finditer(segment):
            c = match.group()
            if c in "{[":
                self.depth += 1
                if self.depth == 1 and not self.top:
                    self.top = c
                    self.expect_key = c == "{"
            elif c in "}]":
                self.depth -= 1
            elif self.depth == 1 and self.top == "{":
                self.expect_key = c == ","

    def _decode(self, raw: str) -> str:
        try:
            return json.loads(f'"{raw}"')
        except ValueError as e:
            raise DataError(f"{self.where} is not valid JSON ({getattr(e, 'msg', e)} in a string); "
                            "fix or remove the line") from None

    def _long(self, raw: str, final: bool) -> Iterator[Piece]:
        """Decode what of a long string's content can be (all of it when `final`)."""
        raw = self.raw + raw
        cut = len(raw) if final else _decodable_end(raw)
        self.raw = raw[cut:]
        if self.mode == "text":
            yield from self.doc.add(self._decode(raw[:cut]))
        else:
            self._decode(raw[:cut])

    def _open_string(self) -> None:
        self.skeleton.append('"')
        self.is_key = self.depth == 1 and self.top == "{" and self.expect_key
        self.string, self.length = [], 0

    def _close_string(self) -> None:
        if self.mode:  # a long string: "" in the skeleton
            self.skeleton.append('"')
            self.streamed = self.streamed or self.mode == "text"
            self.key = None if self.is_key else self.key
        elif self.string is not None:
            raw = "".join(self.string)
            self.skeleton.append(raw + '"')
            if self.is_key:
                self.key = self._decode(raw)
                self.fields += self.key == self.field
        self.string, self.mode, self.raw = None, "", ""

    def feed(self, text: str) -> Iterator[Piece]:
        buf, pos = self.rest + text, 0
        self.rest = ""
        while pos < len(buf):
            if self.string is None and not self.mode:  # between strings
                quote = buf.find('"', pos)
                segment = buf[pos:] if quote < 0 else buf[pos:quote]
                self._structure(segment)
                self.skeleton.append(segment)
                if quote < 0:
                    return
                self._open_string()
                pos = quote + 1
                continue
            end = _STRING_BODY.match(buf, pos).end()
            body, closed = buf[pos:end], end < len(buf) and buf[end] == '"'
            if end < len(buf) and not closed:  # a backslash at the very end: its escape comes next
                self.rest = buf[end:]
            if self.string is not None:
                self.string.append(body)
                self.length += len(body)
                if self.length > LONG_STRING and not closed:  # too long to keep: decode as it comes
                    value = self.depth == 1 and self.top == "{" and not self.is_key
                    self.mode = "text" if value and self.key == self.field else "drop"
                    if self.mode == "text" and self.streamed:
                        raise DataError(f"{self.where} has the field {self.field!r} twice; keep one")
                    raw, self.string = "".join(self.string), None
                    yield from self._long(raw, final=False)
            else:
                yield from self._long(body, final=closed)
            if not closed:
                return
            self._close_string()
            pos = end + 1

    def close(self) -> Iterator[Piece]:
        """The end of the line: check the record, end its document."""
        self.skeleton.append(self.rest)
        record = _parse_line(self.path, self.number, "".join(self.skeleton))
        if record is None:
            return
        if self.field not in record:
            raise _missing_field(self.where, self.field, record)
        if self.streamed and self.fields > 1:
            raise DataError(f"{self.where} has the field {self.field!r} twice; keep one")
        if self.streamed:
            yield from self.doc.end()
        else:
            yield from record_documents([record[self.field]], self.field, self.where)


def read_jsonl(path: Path, text_field: str, errors: str = "strict", version: FileVersion | None = None) -> Iterator[Piece]:
    """One document per JSON line, from the record's `text_field`; blank lines are skipped. A line
    longer than PIECE_CHARS is read as it comes (`_StreamedRecord`), not held."""
    number, parts, size = 0, [], 0
    streamed: _StreamedRecord | None = None
    for part, ends in _line_parts(path, errors, version):
        if streamed is not None:
            yield from streamed.feed(part)
        else:
            parts.append(part)
            size += len(part)
            if not ends and size > PIECE_CHARS:
                streamed = _StreamedRecord(path, number + 1, text_field)
                yield from streamed.feed("".join(parts))
                parts, size = [], 0
        if ends:
            number += 1
            if streamed is not None:
                yield from streamed.close()
                streamed = None
            else:
                yield from _record_text(path, number, "".join(parts), text_field)
                parts, size = [], 0
    if streamed is not None:
        yield from streamed.close()
    elif parts:
        yield from _record_text(path, number + 1, "".join(parts), text_field)


def _parquet_module():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet needs pyarrow: pip install 'tinylm[parquet]'") from None
    return pq


PARQUET_BATCH_BYTES = 8 << 20  # about this much text per record batch read from a Parquet file


def _batch_rows(table: object, column: str) -> int:
    """Rows per record batch for about PARQUET_BATCH_BYTES of `column` (at most 256, at least 1)."""
    meta = table.metadata  # type: ignore[attr-defined]
    index = table.schema_arrow.names.index(column)  # type: ignore[attr-defined]
    per_row = 0.0
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        if group.num_rows and index < group.num_columns:
            per_row = max(per_row, group.column(index).total_uncompressed_size / group.num_rows)
    return max(1, min(256, int(PARQUET_BATCH_BYTES // max(per_row, 1))))


def _long_cell(data: memoryview, where: str) -> Iterator[Piece]:
    """A long UTF-8 cell of an Arrow string array, decoded a piece at a time."""
    doc, pos = DocumentSplitter(), 0
    while pos < len(data):
        stop = min(pos + 4 * PIECE_CHARS, len(data))
        if stop < len(data):
            stop = pos + _utf8_end(data[pos:stop])
        try:
            text = str(data[pos:stop], "utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: a text cell is not valid UTF-8 ({e})") from None
        yield from doc.add(text)
        pos = stop
    yield from doc.end()


def column_documents(column: object, text_field: str, where: str) -> Iterator[Piece]:
    """One document per value of an Arrow column (Parquet rows, Hub records; see `record_documents`);
    a cell longer than PIECE_CHARS is decoded in pieces from the column's buffer, not as one string."""
    import pyarrow as pa

    for array in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        large = pa.types.is_large_string(array.type)
        if not (large or pa.types.is_string(array.type)):
            yield from record_documents(array.to_pylist(), text_field, where)
            continue
        _, offsets_buffer, data_buffer = array.buffers()
        offsets = np.frombuffer(offsets_buffer, np.int64 if large else np.int32)[array.offset:array.offset + len(array) + 1]
        if not len(array) or int(np.diff(offsets).max()) <= PIECE_CHARS:
            yield from record_documents(array.to_pylist(), text_field, where)
            continue
        data, valid = memoryview(data_buffer), array.is_valid().to_numpy(zero_copy_only=False)
        for i in range(len(array)):
            if not valid[i]:
                continue
            start, end = int(offsets[i]), int(offsets[i + 1])
            if end - start > PIECE_CHARS:
                yield from _long_cell(data[start:end], where)
            else:
                yield from record_documents([str(data[start:end], "utf-8")], text_field, where)


def read_parquet(file: Path | IO[bytes], text_field: str, name: str = "",
                 version: FileVersion | None = None) -> Iterator[Piece]:
    """One document per row of the `text_field` column, read a record batch at a time (about
    PARQUET_BATCH_BYTES of text each); a local file must stay `version` while it is read."""
    pq = _parquet_module()
    name = name or str(file)
    if version is not None:
        version.check()
    try:
        table = pq.ParquetFile(file, pre_buffer=False)  # fetch row groups one by one, as needed
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for files that are not Parquet
        raise DataError(f"{name} is not a readable Parquet file ({e})") from None
    columns = table.schema_arrow.names
    if text_field not in columns:
        raise DataError(f"{name} has no column {text_field!r} (it has: {', '.join(columns)}); "
                        "name the text column with --text-field")
    for batch in table.iter_batches(batch_size=_batch_rows(table, text_field), columns=[text_field]):
        if version is not None:
            version.check()
        yield from column_documents(batch.column(0), text_field, name)
    if version is not None:
        version.check()


def read_file(path: Path, text_field: str = "text", errors: str = "strict",
              version: FileVersion | None = None) -> Iterator[Piece]:
    if path.suffix == ".jsonl":
        return read_jsonl(path, text_field, errors, version)
    if path.suffix == ".parquet":
        return read_parquet(path, text_field, version=version)
    return read_text(path, errors, version)


# --------------------------------------------------------------------------- sources


def chain(*streams: Stream) -> Stream:
    return lambda: (piece for stream in streams for piece in stream())


def describe_versions(versions: dict[Path, FileVersion], root: Path | None = None) -> dict[str, dict]:
    """Size and sha256 of each file version, by name (relative to `root`): what meta.json records."""
    return {str(p.relative_to(root)) if root else p.name: {"bytes": v.size, "sha256": v.sha256}
            for p, v in versions.items()}


def cache_key(*parts: object) -> str:
    return fileio.sha256_bytes(json.dumps(parts, sort_keys=True, default=str).encode())


def local_source(spec: str, text_field: str = "text", errors: str = "strict") -> Source:
    """A .txt, .jsonl or .parquet file, or a folder of them (recursively, in path order). Each file
    is hashed now (the cache key, meta.json) and every later read must find the same bytes."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"folder {path} contains no .txt, .jsonl or .parquet files")
    else:
        files = [path]
    versions = {p: snapshot(p) for p in files}
    described = describe_versions(versions, path if path.is_dir() else None)
    size = sum(f["bytes"] for f in described.values())
    if size == 0:
        raise DataError(f"{path} {'is empty' if path.is_file() else 'holds only empty files'}; "
                        "give a corpus with some text in it")
    stream = chain(*(lambda p=p: read_file(p, text_field, errors, versions[p]) for p in files))
    uses_field = any(p.suffix != ".txt" for p in files)
    key = cache_key(sorted(described.items()), text_field if uses_field else None)
    return Source(str(path), {"all": stream}, key, size, described,
                  versions={str(p): v for p, v in versions.items()})


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

"""Tokenize a text source once into memory-mapped token files, streaming, in parallel.

A data directory holds one `<split>.bin` per split (raw token ids, uint16 while the vocabulary
fits, else uint32), the tokenizer (`tokenizer.tinylm.json`) and `meta.json`.

    source pieces --route--> (split, text) --re-cut where the tokenizer allows--> batches
                  --> worker processes (encode) --in order--> split writers (append to
                  .<split>.bin.tmp, cap, end-of-text)

Splits: a source's own (train/val/test) when it has them; otherwise the last `val_fraction` of
the text by bytes (`tail`, cutting inside a document if needed), or each document drawn into
validation with probability `val_fraction` from a seeded generator (`shuffle`). With a token
cap, training stops after `max_tokens` tokens; an unsplit source then continues into a
validation split of `max_tokens * val_fraction / (1 - val_fraction)` tokens.

Memory stays bounded: sources are read piece by piece, pieces are re-cut holding only the text
since the tokenizer's last allowed cut (`Tokenizer.cuts`; a stretch with none is held whole, with a
warning, rather than cut), at most a few batches are in flight, and tokens go straight to disk.
The source's files are checked against the versions hashed when it was opened after each pass
(`Source.check`), so the tokens and meta.json are of one version. Token files are written under
temporary names and renamed when complete; `meta.json` is removed first and written last,
atomically, so a directory is complete exactly when `meta.json` exists and its files have the
recorded sizes.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import multiprocessing
import os
import re
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from tinylm import fileio
from tinylm.version import __version__
from tinylm.config import DataConfig, absolute_tokenizer_spec
from tinylm.console import console, progress, warn
from tinylm.data.sources import PIECE_CHARS, Source
from tinylm.data.spec import read_source
from tinylm.errors import DataError, TokenizerError
from tinylm.config.fields import unsigned_seed
from tinylm.tokenizers import Tokenizer, load_tokenizer, parse_spec, spec_identity, train_tokenizer
from tinylm.tokenizers.base import PieceCutter, safe_chunks

META_FILE = "meta.json"
FORMAT = 3
BATCH_CHARS = 1 << 22  # text per unit of work sent to a worker process
PARALLEL_MIN_BYTES = 16 << 20  # smaller sources are tokenized in this process (no worker start-up)
TRAIN_CHARS_PER_TOKEN = 8  # with a token cap, tokenizers are trained on at most this many chars per token


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# --------------------------------------------------------------------------- encoding


def encode_texts(tokenizer: Tokenizer, texts: list[str], dtype: np.dtype | None = None,
                 threads: bool = True) -> list[np.ndarray]:
    """Token ids of each text; long texts are cut into safe chunks, encoded as one batch (by
    several threads in tokenizers backed by native code) or, with `threads=False`, one by one
    (in worker processes, where the processes are the parallelism)."""
    dtype = dtype or np.dtype(np.int64)
    encode_array = getattr(tokenizer, "encode_array", None)
    if encode_array is not None:
        return [encode_array(t).astype(dtype) for t in texts]
    chunked = [safe_chunks(t, cuts=tokenizer.cuts) for t in texts]
    flat = [c for chunks in chunked for c in chunks]
    encoded = iter(tokenizer.encode_batch(flat) if threads else [tokenizer.encode(c) for c in flat])
    return [np.concatenate([np.asarray(next(encoded), dtype=dtype) for _ in chunks]) if chunks
            else np.zeros(0, dtype) for chunks in chunked]


def encode_documents(tokenizer: Tokenizer, docs: list[str]) -> tuple[np.ndarray, int]:
    """Token ids of whole documents in memory (as preparation would write them: end-of-text
    after each, or a blank line between them when the tokenizer has none) and their UTF-8 bytes."""
    writer = _SplitWriter(None, tokenizer, np.dtype(np.int64))
    for doc, ids in zip(docs, encode_texts(tokenizer, docs), strict=True):
        writer.add(ids, len(doc.encode("utf-8")), True)
    return writer.result(), writer.bytes


_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_dir: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(tokenizer_dir)


def _encode_in_worker(texts: list[str], dtype: str) -> list[np.ndarray]:
    assert _worker_tokenizer is not None
    return encode_texts(_worker_tokenizer, texts, np.dtype(dtype), threads=False)


def _encode_stream(batches: Iterator[list[tuple[str, str, bool]]], tokenizer: Tokenizer, tokenizer_dir: Path,
                   dtype: np.dtype, workers: int) -> Iterator[tuple[list[tuple[str, str, bool]], list[np.ndarray]]]:
    """(batch, ids of each piece) in order; with workers > 1 in a pool of processes, keeping at
    most 2 * workers batches in flight (so memory stays bounded whatever the source size)."""
    if workers <= 1:
        for batch in batches:
            yield batch, encode_texts(tokenizer, [text for _, text, _ in batch], dtype)
        return
    context = multiprocessing.get_context("spawn")  # no fork: tokenizer libraries hold threads
    with cf.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                initargs=(str(tokenizer_dir),)) as pool:
        pending: deque[tuple[list, cf.Future]] = deque()
        for batch in batches:
            pending.append((batch, pool.submit(_encode_in_worker, [text for _, text, _ in batch], dtype.name)))
            if len(pending) >= 2 * workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


# --------------------------------------------------------------------------- writing splits


class _SplitWriter:
    """Appends one split's tokens to a file (or memory), with the document separator and an
    optional cap; `add` returns what did not fit."""

    def __init__(self, path: Path | None, tokenizer: Tokenizer, dtype: np.dtype, limit: int = 0):
        self.path, self.tokenizer, self.dtype, self.limit = path, tokenizer, dtype, limit
        self.file = fileio.open_temporary(path) if path else None  # a full disk: a WriteError naming path
        self.parts: list[np.ndarray] = []  # when writing to memory
        self.tokens = self.bytes = self.documents = 0
        self.in_document = False  # the last piece written did not end its document
        eot, bos = tokenizer.eot_id, tokenizer.bos_id
        self.before = np.array([bos], dtype) if bos is not None else np.zeros(0, dtype)
        self.after = np.array([eot], dtype) if eot is not None else np.zeros(0, dtype)
        self.between = (np.zeros(0, dtype) if eot is not None else
                        np.asarray(tokenizer.encode("\n\n"), dtype))  # no end-of-text: a blank line
        self.between_bytes = 0 if eot is not None else 2

    @property
    def full(self) -> bool:
        return bool(self.limit) and self.tokens >= self.limit

    def _emit(self, ids: np.ndarray) -> None:
        if self.file:
            self.file.write(ids.tobytes())
        else:
            self.parts.append(ids)
        self.tokens += len(ids)

    def add(self, ids: np.ndarray, nbytes: int, ends_document: bool) -> tuple[np.ndarray, int] | None:
        if self.full:
            return ids, nbytes
        if not self.in_document:
            if self.documents and len(self.between):
                self._emit(self.between)
                self.bytes += self.between_bytes
            self._emit(self.before)
            self.documents += 1
        room = self.limit - self.tokens if self.limit else len(ids)
        if len(ids) > room:  # the cap falls inside this piece: keep its head
            kept = ids[:room]
            kept_bytes = len(self.tokenizer.decode(kept.tolist()).encode("utf-8"))
            self._emit(kept)
            self.bytes += kept_bytes
            self.in_document = True
            return ids[room:], max(nbytes - kept_bytes, 0)
        self._emit(ids.astype(self.dtype, copy=False))
        self.bytes += nbytes
        self.in_document = not ends_document
        if ends_document and not self.full:
            self._emit(self.after)
        return None

    def result(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(0, self.dtype)

    def close(self, commit: bool) -> None:
        if self.file is None or self.path is None:
            return
        tmp = fileio.temp_path(self.path)
        if not commit:  # nothing to keep, and nothing to flush onto a disk that may be full
            with contextlib.suppress(OSError):
                self.file.close()
            tmp.unlink(missing_ok=True)
            return
        self.file.sync()
        self.file.close()
        fileio.commit(tmp, self.path)


# --------------------------------------------------------------------------- routing pieces to splits


def _route(src: Source, method: str, val_fraction: float, seed: int, total_bytes: int, capped: bool,
           stop: Callable[[str], bool]) -> Iterator[tuple[str, str, bool]]:
    """(split, text, ends_document) for every piece of the source, in order. `stop(split)` is
    asked between pieces and ends a stream early once its split is full."""
    if src.has_splits:
        for split, stream in src.streams.items():
            for text, last in stream():
                if stop(split):
                    break
                yield split, text, last
        return
    pieces = src.streams["all"]()
    if method == "shuffle":
        rng, doc_split = np.random.default_rng(unsigned_seed(seed)), None
        for text, last in pieces:
            if stop("train"):
                return
            if doc_split is None:
                doc_split = "val" if rng.random() < val_fraction else "train"
            yield doc_split, text, last
            if last:
                doc_split = None
    elif capped:  # tail by tokens: everything goes to train, whose writer overflows into val
        for text, last in pieces:
            if stop("val"):
                return
            yield "train", text, last
    else:  # tail by bytes
        cut, seen = int(total_bytes * (1.0 - val_fraction)), 0
        for text, last in pieces:
            n = len(text.encode("utf-8"))
            if seen >= cut:
                yield "val", text, last
            elif seen + n <= cut:  # (a document cut right after this piece ends its train part here)
                yield "train", text, last or seen + n == cut
            else:
                head = text.encode("utf-8")[:cut - seen].decode("utf-8", errors="ignore")
                yield "train", head, True
                if len(head) < len(text) or last:
                    yield "val", text[len(head):], last
            seen += n


HELD_WARNING = 64 * PIECE_CHARS  # characters of one document held uncut before a warning says so


def _cut_documents(routed: Iterator[tuple[str, str, bool]], tokenizer: Tokenizer,
                   name: str) -> Iterator[tuple[str, str, bool]]:
    """The routed pieces (cut anywhere) re-cut where the tokenizer allows (`Tokenizer.cuts`; None: each
    document whole), so that encoding them one by one gives the ids of the whole documents. What is
    held is the text since the last allowed cut: bounded for text with spaces or line breaks; a long
    stretch without any (or a document, for a tokenizer that cannot be cut) is held whole, with a warning."""
    cutter, split, warned = PieceCutter(tokenizer.cuts, PIECE_CHARS // 2), None, False
    for where, text, last in routed:
        if split is not None and where != split:  # a document left unfinished (its split filled up)
            yield split, cutter.end(), False
        split = where
        for piece in cutter.add(text):
            yield split, piece, False
        if last:
            yield split, cutter.end(), True
            split = None
        elif cutter.held > HELD_WARNING and not warned:
            warned = True
            where_cut = "nowhere" if tokenizer.cuts is None else "no place in it"
            warn(f"{name}: {cutter.held / 1e6:,.0f}M characters of one document and counting are held in memory "
                 f"to encode them exactly: the {tokenizer.kind} tokenizer may be cut {where_cut} (its "
                 "pre-tokenizer could join text across any other place)")
    if split is not None:
        yield split, cutter.end(), False


def _batches(routed: Iterator[tuple[str, str, bool]], chars: int) -> Iterator[list[tuple[str, str, bool]]]:
    batch, size = [], 0
    for item in routed:
        batch.append(item)
        size += len(item[1])
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# --------------------------------------------------------------------------- the whole preparation


def _counted(src: Source, counts: dict[str, int]) -> Iterator[tuple[str, bool]]:
    """The training stream's pieces, counting documents and UTF-8 bytes as they go by."""
    for text, last in src.streams["train" if src.has_splits else "all"]():
        counts["bytes"] += len(text.encode("utf-8"))
        counts["documents"] += last
        yield text, last


def _training_text(src: Source, cap: int, counts: dict[str, int], cuts: re.Pattern[str] | None) -> Iterator[str]:
    """The text a tokenizer is trained on (the training stream, at most TRAIN_CHARS_PER_TOKEN
    characters per capped token), re-cut where the tokenizer kind allows (`cuts`), so that training
    counts what encoding the whole text would."""
    budget = cap * TRAIN_CHARS_PER_TOKEN if cap else 0
    cutter = PieceCutter(cuts, PIECE_CHARS // 2)
    for text, last in _counted(src, counts):
        yield from cutter.add(text)
        if last:
            yield cutter.end()
        budget -= len(text)
        if cap and budget <= 0:
            break
    if cutter.held:
        yield cutter.end()


def _auto_workers(src: Source, workers: int, cap: int) -> int:
    if workers:
        return workers
    size = src.size if src.size is not None else sum(f["bytes"] or 0 for f in src.files.values()) or None
    if cap:  # about 4 bytes of text per token
        size = min(size or cap * 4, cap * 4)
    if size is not None and size < PARALLEL_MIN_BYTES:
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def prepare(source: str | Source, tokenizer: str | Tokenizer, out_dir: str | Path, val_fraction: float = 0.1, *,
            split: str = "tail", split_seed: int = 1337, max_tokens: int = 0, workers: int = 0,
            text_field: str = "text", source_dir: str = "", errors: str = "strict", hf_split: str = "train") -> Path:
    """Tokenize `source` (a Source, or anything `read_source` takes) into `out_dir`;
    `tokenizer` is a spec to train (e.g. "char") or an existing tokenizer. Returns the directory."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"the validation fraction must be in (0, 1), got {val_fraction}")
    src = source if isinstance(source, Source) else read_source(source, errors, text_field, source_dir, hf_split)
    cap = max_tokens or src.max_tokens
    counts = {"bytes": 0, "documents": 0}
    spec = absolute_tokenizer_spec(tokenizer) if isinstance(tokenizer, str) else tokenizer.kind  # for meta.json
    started = time.perf_counter()
    if isinstance(tokenizer, str) and parse_spec(tokenizer)[0].needs_corpus:
        console.print(f"building the {spec} vocabulary from {src.name} ...")
        try:
            tok = train_tokenizer(tokenizer, _training_text(src, cap, counts, parse_spec(tokenizer)[0].cuts))
        except TokenizerError:
            if not counts["documents"]:
                raise DataError(f"{src.name} has no text in it (it is empty or only whitespace)") from None
            raise
        src.check()  # the vocabulary was built from the files as hashed
    else:
        tok = train_tokenizer(tokenizer, []) if isinstance(tokenizer, str) else tokenizer
    needs_total = not src.has_splits and split == "tail" and not cap
    if needs_total and not counts["bytes"]:
        for _ in _counted(src, counts):
            pass
        src.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)  # incomplete from here until meta.json is rewritten
    tok.save(out)
    dtype = token_dtype(tok.vocab_size)
    names = list(src.streams) if src.has_splits else ["train", "val"]
    limits = {"train": cap, "val": round(cap * val_fraction / (1 - val_fraction)) if cap and not src.has_splits else 0}
    writers = {name: _SplitWriter(out / f"{name}.bin", tok, dtype, limits.get(name, 0)) for name in names}
    overflow = "val" if cap and split == "tail" and not src.has_splits else None
    workers = _auto_workers(src, workers, cap)
    total = counts["bytes"] if needs_total else None
    # a given (not trained) tokenizer, e.g. a fine-tune's base or --tokenizer-from: count the text it lacks
    unk = tok.unk_id if not isinstance(tokenizer, str) else None
    unknown = 0
    committed = False
    try:
        routed = _route(src, split, val_fraction, split_seed, counts["bytes"], bool(cap),
                        stop=lambda name: writers[name].full)
        routed = _cut_documents(routed, tok, src.name)
        with _Progress(src.name, total, workers) as bar:
            # with a cap, small batches: reading stops soon after the cap (a streamed source is not over-fetched)
            chars = min(BATCH_CHARS, max(cap, 4096)) if cap else BATCH_CHARS
            for batch, encoded in _encode_stream(_batches(routed, chars), tok, out, dtype, workers):
                for (name, text, last), ids in zip(batch, encoded, strict=True):
                    if unk is not None:
                        unknown += int(np.count_nonzero(ids == unk))
                    nbytes = len(text.encode("utf-8"))
                    rest = writers[name].add(ids, nbytes, last)
                    if rest is not None and overflow and name != overflow:
                        writers[overflow].add(*rest, last)
                    bar.advance(nbytes, len(ids), last)
        if not any(w.documents for w in writers.values()):
            raise DataError(f"{src.name} has no text in it (it is empty or only whitespace)")
        for name, w in writers.items():
            if w.tokens < 2 and name == overflow and not writers["train"].full:
                raise DataError(f"{src.name}: the text ran out at {writers['train'].tokens:,} training tokens, "
                                f"before the cap of {cap:,} (data.max_tokens) and the validation tokens after it; "
                                "lower --max-tokens below the size of the source")
            if w.tokens < 2:
                raise DataError(f"{src.name}: the {name} split would hold {w.tokens} tokens; give more text"
                                + (" or a larger --max-tokens" if cap else " or change the validation fraction"))
        src.check()  # the tokens are those of the files as hashed (and as meta.json names them)
        for w in writers.values():
            w.close(commit=True)
        committed = True
    finally:
        if not committed:
            for w in writers.values():
                w.close(commit=False)
    meta = {
        "format": FORMAT,
        "tinylm_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": {"name": src.name, **({"revision": src.revision} if src.revision else {}),
                   "sha256": src.sha256, "files": src.files,
                   "documents": sum(w.documents for w in writers.values()),
                   "bytes": sum(w.bytes for w in writers.values())},
        "tokenizer": {"spec": spec, "kind": tok.kind, "vocab_size": tok.vocab_size,
                      "fingerprint": tok.fingerprint()},
        "dtype": dtype.name,
        "split": {"method": "source"} if src.has_splits else {"method": split, "val_fraction": val_fraction,
                                                               **({"seed": split_seed} if split == "shuffle" else {})},
        "max_tokens": cap,
        "splits": {name: {"file": f"{name}.bin", "tokens": w.tokens, "bytes": w.bytes, "documents": w.documents}
                   for name, w in writers.items()},
        "seconds": round(time.perf_counter() - started, 2),
    }
    if unknown:
        meta["unknown_tokens"] = unknown
        total_tokens = sum(w.tokens for w in writers.values())
        warn(f"{unknown:,} of {total_tokens:,} tokens of {src.name} are the {tok.kind} tokenizer's <unk>: the text has "
             f"{tok.unit}s its vocabulary lacks (a model trained on it learns them as one unknown symbol)")
    fileio.write_json(out / META_FILE, meta)
    return out


class _Progress:
    """Documents, tokens and MB/s while tokenizing (a bar on terminals, a summary line elsewhere)."""

    def __init__(self, name: str, total_bytes: int | None, workers: int):
        from rich.progress import TextColumn

        self.name, self.workers = name, workers
        self.bytes = self.tokens = self.documents = 0
        self.start = time.perf_counter()
        self.bar = progress(TextColumn("{task.fields[stats]}"), counts=False)
        self.task = self.bar.add_task(f"tokenizing {name}", total=total_bytes, stats="")

    def __enter__(self) -> _Progress:
        self.bar.__enter__()
        return self

    def advance(self, nbytes: int, ntokens: int, ends_document: bool) -> None:
        self.bytes += nbytes
        self.tokens += ntokens
        self.documents += ends_document
        self.bar.update(self.task, advance=nbytes, stats=self.stats())

    def stats(self) -> str:
        rate = self.bytes / 1e6 / max(time.perf_counter() - self.start, 1e-9)
        return f"{self.documents:,} docs  {self.tokens:,} tokens  {rate:.1f} MB/s"

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)
        if not exc[0]:
            console.print(f"tokenized {self.name}: {self.stats()} ({self.bytes / 1e6:.1f} MB, "
                          f"{self.workers} process{'es' if self.workers > 1 else ''})")


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    """meta.json of a complete data directory; a clear error for anything else."""
    d = Path(data_dir)
    if d.is_file():
        raise DataError(f"{d} is a file, not a data directory (the folder `tinylm prepare` writes); give a text "
                        f"file with --text {d}, or prepare it first: tinylm prepare {d} --out DATA_DIR")
    if not d.is_dir():
        raise DataError(f"data directory {d} does not exist; create it with `tinylm prepare`")
    meta_path = d / META_FILE
    if not meta_path.is_file():
        raise DataError(f"{d} is not a complete data directory (no {META_FILE}; preparation "
                        "was interrupted or never ran); re-run `tinylm prepare`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        itemsize = np.dtype(meta["dtype"]).itemsize
        for info in meta["splits"].values():
            size = (d / info["file"]).stat().st_size if (d / info["file"]).is_file() else -1
            if size != info["tokens"] * itemsize:
                raise DataError(f"{d / info['file']} is missing or truncated; re-run `tinylm prepare`")
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{meta_path} is corrupt ({e}); re-run `tinylm prepare`") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{d} was prepared by an incompatible tinylm (format {meta.get('format')}); "
                        "re-run `tinylm prepare`")
    return meta


def load_split(data_dir: str | Path, split: str) -> np.memmap:
    meta = read_meta(data_dir)
    if split not in meta["splits"]:
        raise DataError(f"{data_dir} has no {split!r} split (it has: {', '.join(meta['splits'])})")
    info = meta["splits"][split]
    return np.memmap(Path(data_dir) / info["file"], dtype=meta["dtype"], mode="r")


# --------------------------------------------------------------------------- cache


def prepared_dir_for(src: Source, data: DataConfig, tokenizer: Tokenizer | None = None) -> Path:
    """The cache directory of `src` prepared with `data`'s options and tokenizer: data.tokenizer (a
    spec), or `tokenizer` itself (a run's, e.g. a fine-tune's base: keyed by its fingerprint)."""
    identity = f"{tokenizer.kind}@{tokenizer.fingerprint()}" if tokenizer is not None else spec_identity(data.tokenizer)
    key = {"source": src.key, "tokenizer": identity, "val": data.val_fraction, "format": FORMAT,
           "split": data.split, "max_tokens": data.max_tokens or src.max_tokens}
    if data.split == "shuffle":
        key["seed"] = data.split_seed
    if data.errors != "strict":
        key["errors"] = data.errors
    digest = fileio.sha256_bytes(json.dumps(key, sort_keys=True).encode())[:12]
    stem = "".join(c if c.isalnum() else "-" for c in Path(src.name).stem)[:40]
    spec = tokenizer.kind if tokenizer is not None else data.tokenizer
    label = "hf" if spec.startswith("hf") else spec.replace(":", "")  # no path in the name
    return fileio.cache_root() / "prepared" / f"{stem}-{label}-{digest}"


def prepare_config(src: Source, tokenizer: str | Tokenizer, out: str | Path, data: DataConfig) -> Path:
    """`prepare` with the options of a DataConfig."""
    return prepare(src, tokenizer, out, data.val_fraction, split=data.split, split_seed=data.split_seed,
                   max_tokens=data.max_tokens, workers=data.workers)


def open_source(data: DataConfig) -> Source:
    """The source `data` names; with data.source_splits false, a dataset's training split alone."""
    src = read_source(data.source, data.errors, data.text_field, data.source_dir, data.hf_split)
    return src if data.source_splits else src.training_split()


def resolve_data_dir(data: DataConfig) -> tuple[Path, bool]:
    """The data directory for a run: `data.dir` as given, or `data.source` prepared once into
    the cache. Returns (directory, whether it was prepared now)."""
    if data.dir:
        read_meta(data.dir)
        return Path(data.dir), False
    src = open_source(data)
    out = prepared_dir_for(src, data)
    if is_prepared(out, src):
        return out, False
    return prepare_config(src, data.tokenizer, out, data), True


def is_prepared(out: str | Path, src: Source) -> bool:
    """Whether `out` is a complete data directory of `src` (a cache entry to reuse): meta.json there
    and, for local files (hashed when the source was opened), naming their sha256."""
    try:
        meta = read_meta(out)
    except DataError:
        return False
    return not src.versions or meta["source"].get("sha256") == src.sha256

"""Tokenize a text source once into memory-mapped token files.

A data directory holds `train.bin` and `val.bin` (raw token ids, uint16 while the vocabulary
fits, else uint32), the tokenizer (`tokenizer.tinylm.json`) and `meta.json`. `meta.json` is
written last and atomically, and removed first when a directory is re-prepared, so a
directory is complete exactly when `meta.json` exists and its files have the recorded sizes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from tinylm import __version__, fileio
from tinylm.config import DataConfig
from tinylm.data.sources import Source, read_source
from tinylm.errors import DataError
from tinylm.tokenizers import Tokenizer, train_tokenizer
from tinylm.tokenizers.base import safe_chunks

META_FILE = "meta.json"
FORMAT = 1
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def split_documents(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Hold out the tail `val_fraction` of the characters (cutting inside a document if needed)."""
    total = sum(len(d) for d in docs)
    cut = int(total * (1.0 - val_fraction))
    train: list[str] = []
    for i, doc in enumerate(docs):
        if cut <= len(doc):
            head, tail = doc[:cut], doc[cut:]
            return train + ([head] if head else []), ([tail] if tail else []) + docs[i + 1:]
        train.append(doc)
        cut -= len(doc)
    return train, []


def encode_documents(tokenizer: Tokenizer, docs: list[str], batch_chars: int = 1 << 23) -> tuple[np.ndarray, int]:
    """Token ids of the documents, end-of-text between them (or a blank line when the
    tokenizer has none), and the number of UTF-8 bytes of text they encode. Documents are cut
    into safe chunks and encoded `batch_chars` characters at a time with `encode_batch`."""
    if tokenizer.eot_id is None:
        text = "\n\n".join(docs)
        encode = getattr(tokenizer, "encode_array", tokenizer.encode_long)
        return np.asarray(encode(text), dtype=np.int64), len(text.encode("utf-8"))
    eot = np.array([tokenizer.eot_id], dtype=np.int64)
    parts: list[np.ndarray] = []
    batch: list[list[str]] = []  # the chunks of each document in the batch

    def flush() -> None:
        encoded = iter(tokenizer.encode_batch([c for chunks in batch for c in chunks]))
        for chunks in batch:
            parts.extend(np.asarray(next(encoded), dtype=np.int64) for _ in chunks)
            parts.append(eot)
        batch.clear()

    size = 0
    for doc in docs:
        batch.append(safe_chunks(doc))
        size += len(doc)
        if size >= batch_chars:
            flush()
            size = 0
    flush()
    nbytes = sum(len(doc.encode("utf-8")) for doc in docs)
    return (np.concatenate(parts) if parts else np.zeros(0, np.int64)), nbytes


def _write_tokens(path: Path, ids: np.ndarray, dtype: np.dtype) -> None:
    with fileio.atomic_write(path) as f:
        f.write(ids.astype(dtype).tobytes())


def prepare(source: str | Source, tokenizer: str | Tokenizer, out_dir: str | Path,
            val_fraction: float = 0.1) -> Path:
    """Tokenize `source` into `out_dir`; `tokenizer` is a spec to train (e.g. "char") or an
    existing tokenizer. Returns the data directory."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"the validation fraction must be in (0, 1), got {val_fraction}")
    src = source if isinstance(source, Source) else read_source(source)
    spec = tokenizer if isinstance(tokenizer, str) else tokenizer.kind
    tok = train_tokenizer(tokenizer, src.documents) if isinstance(tokenizer, str) else tokenizer
    train_docs, val_docs = split_documents(src.documents, val_fraction)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)  # incomplete from here until meta.json is rewritten
    tok.save(out)
    dtype = token_dtype(tok.vocab_size)
    splits: dict[str, Any] = {}
    for split, docs in zip(SPLITS, (train_docs, val_docs), strict=True):
        ids, nbytes = encode_documents(tok, docs)
        if len(ids) < 2:
            raise DataError(f"{src.name}: the {split} split would hold {len(ids)} tokens; "
                            "give more text or change the validation fraction")
        _write_tokens(out / f"{split}.bin", ids, dtype)
        splits[split] = {"file": f"{split}.bin", "tokens": int(len(ids)), "bytes": nbytes,
                         "documents": len(docs)}
    meta = {
        "format": FORMAT,
        "tinylm_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": {"name": src.name, "sha256": src.sha256, "documents": len(src.documents),
                   "characters": src.characters},
        "tokenizer": {"spec": spec, "kind": tok.kind, "vocab_size": tok.vocab_size,
                      "fingerprint": tok.fingerprint()},
        "dtype": dtype.name,
        "split": {"method": "tail", "val_fraction": val_fraction},
        "splits": splits,
    }
    fileio.write_json(out / META_FILE, meta)
    return out


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    """meta.json of a complete data directory; a clear error for anything else."""
    d = Path(data_dir)
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


def prepared_dir_for(src: Source, data: DataConfig) -> Path:
    key = {"sha256": src.sha256, "tokenizer": data.tokenizer, "val": data.val_fraction, "format": FORMAT}
    if data.errors != "strict":
        key["errors"] = data.errors
    digest = fileio.sha256_bytes(json.dumps(key, sort_keys=True).encode())[:12]
    stem = "".join(c if c.isalnum() else "-" for c in Path(src.name).stem)[:40]
    return fileio.cache_root() / "prepared" / f"{stem}-{data.tokenizer.replace(':', '')}-{digest}"


def resolve_data_dir(data: DataConfig) -> tuple[Path, bool]:
    """The data directory for a run: `data.dir` as given, or `data.source` prepared once into
    the cache. Returns (directory, whether it was prepared now)."""
    if data.dir:
        read_meta(data.dir)
        return Path(data.dir), False
    src = read_source(data.source, data.errors)
    out = prepared_dir_for(src, data)
    try:
        read_meta(out)
        return out, False
    except DataError:
        return prepare(src, data.tokenizer, out, data.val_fraction), True

